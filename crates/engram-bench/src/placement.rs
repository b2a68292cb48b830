//! The placement suite: the cluster's pure placement logic (`engram-cluster`), no network.
//!
//! Balance and movement over many random clusters (10 nodes, 10,000 spaces, 150 virtual nodes,
//! node ids and space ids drawn from a seed per cluster), lookups in a hot loop, replica and rack
//! distinctness, a rebalance plan driven through the scheduler on a virtual clock, and the
//! routing simulation with stale views under churn.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use engram_cluster::sim::{self, SimConfig};
use engram_cluster::{
    plan, Change, MovePriority, MoveScheduler, NodeId, NodeInfo, PlacementConfig, PlacementTable,
    Poll, SchedulerConfig, SpaceCatalog, SpaceKey, TokenStrategy,
};
use rand::Rng;

use crate::util::{self, compare, percentile, report, Better};

const NODES: usize = 10;
const SPACES: usize = 10_000;

struct Config {
    quick: bool,
    /// Random clusters (node-id and space-id seeds) for the balance and movement figures.
    seeds: u64,
    /// Minimum time of each lookup measurement.
    lookup_time: Duration,
    /// Requests in the routing simulation.
    sim_requests: u64,
}

impl Config {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                seeds: 100,
                lookup_time: Duration::from_millis(300),
                sim_requests: 200_000,
            }
        } else {
            Self {
                quick,
                seeds: 500,
                lookup_time: Duration::from_secs(2),
                sim_requests: 2_000_000,
            }
        }
    }
}

/// One random cluster: node ids and space keys from `seed`.
struct Cluster {
    nodes: Vec<NodeInfo>,
    keys: Vec<SpaceKey>,
    names: Vec<String>,
}

impl Cluster {
    fn new(seed: u64, nodes: usize, spaces: usize) -> Self {
        let mut rng = util::rng(0x5eed_0000 + seed);
        let nodes = (0..nodes)
            .map(|_| NodeInfo::new(NodeId(rng.gen())))
            .collect();
        let names: Vec<String> = (0..spaces)
            .map(|_| format!("space-{:016x}", rng.gen::<u64>()))
            .collect();
        let keys = names.iter().map(|n| SpaceKey::of(n)).collect();
        Self { nodes, keys, names }
    }

    fn catalog(&self) -> SpaceCatalog {
        SpaceCatalog::from_keys(self.keys.iter().copied())
    }
}

/// Spaces per member (members with none included).
fn counts(table: &PlacementTable, keys: &[SpaceKey]) -> Vec<f64> {
    let ids: Vec<NodeId> = table.members().keys().copied().collect();
    let mut c = vec![0u64; ids.len()];
    for &k in keys {
        let owner = table.primary_of_key(k).expect("a non-empty table");
        c[ids.binary_search(&owner).expect("the owner is a member")] += 1;
    }
    c.into_iter().map(|x| x as f64).collect()
}

/// Copies (primary and replicas) per member.
fn copies(table: &PlacementTable, keys: &[SpaceKey]) -> Vec<f64> {
    let ids: Vec<NodeId> = table.members().keys().copied().collect();
    let mut c = vec![0u64; ids.len()];
    for &k in keys {
        for n in table.replica_set_of_key(k).nodes() {
            c[ids.binary_search(n).expect("a copy is on a member")] += 1;
        }
    }
    c.into_iter().map(|x| x as f64).collect()
}

/// Population standard deviation as a percentage of the mean.
fn stddev_pct(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    100.0 * var.sqrt() / mean
}

fn max_over_mean(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().cloned().fold(0.0, f64::max) / mean
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median(v: &[f64]) -> f64 {
    percentile(&sorted(v.to_vec()), 50.0)
}

fn p95(v: &[f64]) -> f64 {
    percentile(&sorted(v.to_vec()), 95.0)
}

pub fn run(quick: bool) -> Result<()> {
    let cfg = Config::new(quick);
    println!(
        "# engram-bench placement suite, {} mode, on {}",
        if cfg.quick { "quick" } else { "full" },
        util::machine_description()
    );
    println!(
        "# {NODES} nodes, {SPACES} spaces, 150 virtual nodes per node; {} random clusters (node \
         ids and space ids drawn per seed)",
        cfg.seeds
    );
    let parts = util::selected_parts(&["balance", "lookup", "replicas", "rebalance", "routing"])?;
    let on = |p: &str| parts.iter().any(|q| q == p);
    let started = Instant::now();
    if on("balance") {
        balance(&cfg)?;
    }
    if on("lookup") {
        lookup(&cfg)?;
    }
    if on("replicas") {
        replicas(&cfg)?;
    }
    if on("rebalance") {
        rebalance()?;
    }
    if on("routing") {
        routing(&cfg)?;
    }
    println!(
        "# placement suite done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A way of placing tokens, measured side by side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The default: balanced tokens, the coordinator passing the catalog of spaces.
    Balanced,
    /// Balanced tokens with no catalog: the hash share alone.
    NoCatalog,
    /// Classic consistent hashing.
    Random,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Balanced => "balanced, with catalog (default)",
            Variant::NoCatalog => "balanced, no catalog (share only)",
            Variant::Random => "random tokens",
        }
    }
}

/// Figures of one variant over every cluster.
#[derive(Default)]
struct Figures {
    stddev: Vec<f64>,
    copies: Vec<f64>,
    max_over_mean: Vec<f64>,
    share: Vec<f64>,
    after_growth: Vec<f64>,
    after_leave: Vec<f64>,
    moved_join: Vec<f64>,
    moved_leave: Vec<f64>,
    not_involving: u64,
    rejoin_identical: u64,
    build: Duration,
}

fn measure(variant: Variant, seed: u64, f: &mut Figures) -> Result<()> {
    let cl = Cluster::new(seed, NODES + 1, SPACES);
    let full = cl.catalog();
    let empty = SpaceCatalog::new();
    let (config, catalog) = match variant {
        Variant::Balanced => (PlacementConfig::default(), &full),
        Variant::NoCatalog => (PlacementConfig::default(), &empty),
        Variant::Random => (
            PlacementConfig {
                strategy: TokenStrategy::Random,
                ..PlacementConfig::default()
            },
            &empty,
        ),
    };
    let ten = &cl.nodes[..NODES];
    let t0 = Instant::now();
    let table = PlacementTable::with_nodes(config, ten.to_vec(), catalog)?;
    f.build += t0.elapsed();
    let c = counts(&table, &cl.keys);
    f.stddev.push(stddev_pct(&c));
    f.max_over_mean.push(max_over_mean(&c));
    f.copies.push(stddev_pct(&copies(&table, &cl.keys)));
    let shares: Vec<f64> = table.shares().values().copied().collect();
    f.share.push(stddev_pct(&shares));
    // 10,000 more spaces, created after the placement was computed.
    let more = Cluster::new(1_000_000 + seed, 0, SPACES);
    let all: Vec<SpaceKey> = cl.keys.iter().chain(&more.keys).copied().collect();
    f.after_growth.push(stddev_pct(&counts(&table, &all)));

    // An 11th node joins.
    let newcomer = cl.nodes[NODES].clone();
    let joined = table.apply(&Change::Join(newcomer.clone()), catalog)?;
    let mut moved = 0u64;
    for &k in &cl.keys {
        let (a, b) = (table.primary_of_key(k), joined.primary_of_key(k));
        if a != b {
            moved += 1;
            if b != Some(newcomer.id) {
                f.not_involving += 1;
            }
        }
    }
    f.moved_join.push(moved as f64);

    // A random member leaves, then rejoins.
    let mut rng = util::rng(seed);
    let leaver = ten[rng.gen_range(0..NODES)].id;
    let left = table.apply(&Change::Leave(leaver), catalog)?;
    let mut moved = 0u64;
    for &k in &cl.keys {
        let (a, b) = (table.primary_of_key(k), left.primary_of_key(k));
        if a != b {
            moved += 1;
            if a != Some(leaver) {
                f.not_involving += 1;
            }
        }
    }
    f.moved_leave.push(moved as f64);
    f.after_leave.push(stddev_pct(&counts(&left, &cl.keys)));
    let back = left.apply(&Change::Join(table.members()[&leaver].clone()), catalog)?;
    if back.same_placement(&table) {
        f.rejoin_identical += 1;
    }
    Ok(())
}

/// Balance, movement on join and leave, leave-then-rejoin, for each variant.
fn balance(cfg: &Config) -> Result<()> {
    let variants = [Variant::Balanced, Variant::NoCatalog, Variant::Random];
    let mut all: Vec<Figures> = Vec::new();
    for v in variants {
        let mut f = Figures::default();
        for seed in 0..cfg.seeds {
            measure(v, seed, &mut f)?;
        }
        all.push(f);
    }
    println!(
        "# spaces per node counted (not hash share): standard deviation as % of the mean \
         (population), median [p95] over {} clusters; moves: median [p95] spaces",
        cfg.seeds
    );
    println!(
        "#   {:<34} | {:<15} | {:<15} | {:<15} | {:<15} | {:<13} | {:<13} | build",
        "variant",
        "now",
        "hash share",
        "+10,000 spaces",
        "after a leave",
        "moved, join",
        "moved, leave"
    );
    for (v, f) in variants.iter().zip(&all) {
        println!(
            "#   {:<34} | {:>5.2}% [{:>5.2}] | {:>5.2}% [{:>5.2}] | {:>5.2}% [{:>5.2}] | \
             {:>5.2}% [{:>5.2}] | {:>5.0} [{:>5.0}] | {:>5.0} [{:>5.0}] | {:.1} ms",
            v.name(),
            median(&f.stddev),
            p95(&f.stddev),
            median(&f.share),
            p95(&f.share),
            median(&f.after_growth),
            p95(&f.after_growth),
            median(&f.after_leave),
            p95(&f.after_leave),
            median(&f.moved_join),
            p95(&f.moved_join),
            median(&f.moved_leave),
            p95(&f.moved_leave),
            f.build.as_secs_f64() * 1e3 / cfg.seeds as f64
        );
    }
    for (v, f) in variants.iter().zip(&all) {
        println!(
            "#   {:<34} | copies per node (3 copies): {:>5.2}% [{:>5.2}]",
            v.name(),
            median(&f.copies),
            p95(&f.copies)
        );
    }
    let (d, nc, r) = (&all[0], &all[1], &all[2]);
    println!("# load_stddev_pct: the default (balanced tokens, catalog passed at each join)");
    report("load_stddev_pct", median(&d.stddev), "%");
    compare(
        "load_stddev_pct",
        median(&d.stddev),
        "%",
        Better::Lower,
        Some(4.2),
        Some(2.0),
    );
    report("load_stddev_pct_p95", p95(&d.stddev), "%");
    compare(
        "load_stddev_pct_p95",
        p95(&d.stddev),
        "%",
        Better::Lower,
        Some(4.2),
        Some(2.0),
    );
    report("load_max_over_mean", median(&d.max_over_mean), "x");
    report("load_max_over_mean_p95", p95(&d.max_over_mean), "x");
    report("load_stddev_pct_random", median(&r.stddev), "%");
    report("load_stddev_pct_random_p95", p95(&r.stddev), "%");
    report("load_max_over_mean_random", median(&r.max_over_mean), "x");
    report("load_stddev_pct_no_catalog", median(&nc.stddev), "%");
    report("load_stddev_pct_no_catalog_p95", p95(&nc.stddev), "%");
    report("load_share_stddev_pct", median(&d.share), "%");
    report("load_stddev_pct_after_growth", median(&d.after_growth), "%");
    report("load_stddev_pct_after_leave", median(&d.after_leave), "%");
    report("load_stddev_pct_after_leave_p95", p95(&d.after_leave), "%");
    println!(
        "# copies_stddev_pct: copies (primary + 2 replicas) per node, the storage each node holds"
    );
    report("copies_stddev_pct", median(&d.copies), "%");
    report("copies_stddev_pct_p95", p95(&d.copies), "%");
    report("copies_stddev_pct_no_catalog", median(&nc.copies), "%");
    report("copies_stddev_pct_random", median(&r.copies), "%");
    println!(
        "# moved_on_join: spaces whose primary changes when an 11th node joins (ideal 10,000/11 \
         = 909); moved_on_leave: when one of the 10 leaves (ideal 1,000)"
    );
    report("moved_on_join", median(&d.moved_join), "spaces");
    compare(
        "moved_on_join",
        median(&d.moved_join),
        "spaces",
        Better::Lower,
        Some(1000.0),
        Some(909.0),
    );
    report("moved_on_join_p95", p95(&d.moved_join), "spaces");
    report("moved_on_leave", median(&d.moved_leave), "spaces");
    report("moved_on_leave_p95", p95(&d.moved_leave), "spaces");
    let not_involving: u64 = all.iter().map(|f| f.not_involving).sum();
    println!(
        "# moved_not_involving_changed_node: over all {} joins and {} leaves (every variant), \
         spaces whose primary changed between two nodes that did not change",
        3 * cfg.seeds,
        3 * cfg.seeds
    );
    report(
        "moved_not_involving_changed_node",
        not_involving as f64,
        "spaces",
    );
    compare(
        "moved_not_involving_changed_node",
        not_involving as f64,
        "spaces",
        Better::Lower,
        Some(0.0),
        None,
    );
    let rejoined: u64 = all.iter().map(|f| f.rejoin_identical).sum();
    report(
        "rejoin_identical_pct",
        100.0 * rejoined as f64 / (3 * cfg.seeds) as f64,
        "%",
    );
    ensure!(not_involving == 0, "a move involved only unchanged nodes");
    Ok(())
}

/// Time per call of `f` over `items`: the median of [`LOOKUP_SAMPLES`] samples, each of whole
/// passes over `items` for at least `min / LOOKUP_SAMPLES`. The median, not the mean of the whole
/// run, so that a burst of other work on the machine (a compile on the other core) during part
/// of the run does not decide the figure.
fn ns_per_item<T>(min: Duration, items: &[T], mut f: impl FnMut(&T)) -> f64 {
    let per_sample = min / LOOKUP_SAMPLES;
    let mut samples = Vec::with_capacity(LOOKUP_SAMPLES as usize);
    for _ in 0..LOOKUP_SAMPLES {
        let mut rounds = 0u64;
        let start = Instant::now();
        loop {
            for it in items {
                f(it);
            }
            rounds += 1;
            if start.elapsed() >= per_sample {
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e9 / (rounds as f64 * items.len() as f64));
    }
    median(&samples)
}

/// Samples per lookup measurement.
const LOOKUP_SAMPLES: u32 = 21;

fn lookup(cfg: &Config) -> Result<()> {
    let cl = Cluster::new(0, NODES, SPACES);
    let catalog = cl.catalog();
    let table = PlacementTable::with_nodes(PlacementConfig::default(), cl.nodes.clone(), &catalog)?;
    // Warm up.
    for n in &cl.names {
        black_box(table.primary(n));
    }
    // `black_box` on the `&String` (one pointer) hides the id from the optimiser. Not on the
    // `&str` that `primary` takes: a fat pointer through `black_box` is spilled as one 16-byte
    // store and reloaded as two 8-byte loads, on the critical path before the hash, which cost
    // about 0.9 ns per lookup on the benchmark machine (5.2 against 4.3 ns).
    let lookup = ns_per_item(cfg.lookup_time, &cl.names, |n| {
        black_box(table.primary(black_box(n).as_str()));
    });
    println!(
        "# lookup_ns: space id -> primary on a built table of {} tokens, hot loop over {SPACES} \
         ids (hashing the id included); each lookup figure is the median of {LOOKUP_SAMPLES} \
         samples",
        table.token_count()
    );
    report("lookup_ns", lookup, "ns");
    compare(
        "lookup_ns",
        lookup,
        "ns",
        Better::Lower,
        Some(12.0),
        Some(5.0),
    );
    let by_key = ns_per_item(cfg.lookup_time, &cl.keys, |&k| {
        black_box(table.primary_of_key(black_box(k)));
    });
    report("lookup_key_ns", by_key, "ns");
    let search = ns_per_item(cfg.lookup_time, &cl.keys, |&k| {
        black_box(table.primary_by_search(black_box(k)));
    });
    println!("# the same by binary search over the sorted tokens, without the lookup index");
    report("lookup_key_binary_search_ns", search, "ns");
    let sets = ns_per_item(cfg.lookup_time, &cl.names, |n| {
        black_box(table.replica_set(black_box(n).as_str()));
    });
    println!("# replica_set_ns: space id -> primary + 2 replicas on distinct nodes");
    report("replica_set_ns", sets, "ns");
    let racked: Vec<NodeInfo> = cl
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| n.clone().with_rack(format!("rack-{}", i % 3)))
        .collect();
    let table = PlacementTable::with_nodes(PlacementConfig::default(), racked, &catalog)?;
    let sets = ns_per_item(cfg.lookup_time, &cl.names, |n| {
        black_box(table.replica_set(black_box(n).as_str()));
    });
    println!("# the same, rack-aware over 3 racks");
    report("replica_set_rack_ns", sets, "ns");
    Ok(())
}

fn replicas(cfg: &Config) -> Result<()> {
    let (mut sets, mut distinct, mut rack_distinct, mut degraded, mut degraded_flagged) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let seeds = cfg.seeds.min(100);
    for seed in 0..seeds {
        let cl = Cluster::new(seed, NODES, SPACES);
        let catalog = cl.catalog();
        let racked = |racks: usize| -> Vec<NodeInfo> {
            cl.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| n.clone().with_rack(format!("rack-{}", i % racks)))
                .collect()
        };
        let three = PlacementTable::with_nodes(PlacementConfig::default(), racked(3), &catalog)?;
        let two = PlacementTable::with_nodes(PlacementConfig::default(), racked(2), &catalog)?;
        let rack_of = |t: &PlacementTable, id: &NodeId| t.members()[id].rack.clone();
        for &k in &cl.keys {
            sets += 1;
            let plain = three.replica_set_with(k, 3, false);
            let mut ids = plain.nodes().to_vec();
            ids.sort();
            ids.dedup();
            if ids.len() == 3 {
                distinct += 1;
            }
            let aware = three.replica_set_of_key(k);
            let mut racks: Vec<String> = aware.nodes().iter().map(|n| rack_of(&three, n)).collect();
            racks.sort();
            racks.dedup();
            if racks.len() == 3 && aware.len() == 3 {
                rack_distinct += 1;
            }
            let short = two.replica_set_of_key(k);
            let mut racks: Vec<String> = short.nodes().iter().map(|n| rack_of(&two, n)).collect();
            racks.sort();
            racks.dedup();
            if racks.len() == 2 && short.len() == 3 {
                degraded += 1;
            }
            if short.racks_shared() {
                degraded_flagged += 1;
            }
        }
    }
    println!(
        "# {seeds} clusters x {SPACES} spaces, 3 copies; racks assigned round-robin (3 racks: \
         4/3/3 nodes)"
    );
    report(
        "replica_distinct_pct",
        100.0 * distinct as f64 / sets as f64,
        "%",
    );
    report(
        "rack_distinct_pct",
        100.0 * rack_distinct as f64 / sets as f64,
        "%",
    );
    println!(
        "# with only 2 racks for 3 copies: {:.2}% of sets span both racks and {:.2}% say so \
         (racks_shared)",
        100.0 * degraded as f64 / sets as f64,
        100.0 * degraded_flagged as f64 / sets as f64
    );
    Ok(())
}

/// The plan of a join and of a failure, driven through the scheduler on a virtual clock.
fn rebalance() -> Result<()> {
    let cl = Cluster::new(7, NODES + 1, SPACES);
    let catalog = cl.catalog();
    let table = PlacementTable::with_nodes(
        PlacementConfig::default(),
        cl.nodes[..NODES].to_vec(),
        &catalog,
    )?;
    // Space sizes: 1 to 20 MB.
    let mut rng = util::rng(11);
    let sizes: Vec<u64> = (0..SPACES)
        .map(|_| rng.gen_range(1_000_000..20_000_000))
        .collect();
    let spaces = || {
        cl.names
            .iter()
            .map(|s| s.as_str())
            .zip(sizes.iter().copied())
    };

    let joined = table.apply(&Change::Join(cl.nodes[NODES].clone()), &catalog)?;
    let join_plan = plan(&table, &joined, spaces());
    let failed = table.apply(&Change::Fail(cl.nodes[0].id), &catalog)?;
    let fail_plan = plan(&table, &failed, spaces());
    println!(
        "# join of an 11th node: {} copies to make ({} as primary), all Low, {:.1} GB; failure \
         of a node: {} Critical copies ({:.1} GB) and {} promotions",
        join_plan.moves.len(),
        join_plan.primary_changes(),
        join_plan.bytes(MovePriority::Low) as f64 / 1e9,
        fail_plan.count(MovePriority::Critical),
        fail_plan.bytes(MovePriority::Critical) as f64 / 1e9,
        fail_plan.promotions.len()
    );
    report(
        "rebalance_join_moves",
        join_plan.moves.len() as f64,
        "copies",
    );
    report(
        "rebalance_fail_critical_moves",
        fail_plan.count(MovePriority::Critical) as f64,
        "copies",
    );

    // Both plans at once through one scheduler: every critical move is handed out before any
    // low one, and low moves go at the configured rate. Each move takes 50 ms of virtual time.
    let mut moves = join_plan.moves.clone();
    moves.extend(fail_plan.moves.iter().cloned());
    let mut s = MoveScheduler::new(moves, SchedulerConfig::default(), Duration::ZERO)?;
    let take = Duration::from_millis(50);
    let mut now = Duration::ZERO;
    let mut running: Vec<(Duration, engram_cluster::MoveId)> = Vec::new();
    let (mut low_started_first, mut low_bytes, mut critical_done_at) = (None, 0u64, Duration::ZERO);
    let mut critical_after_low = 0u64;
    loop {
        running.sort();
        match s.poll(now) {
            Poll::Start(id, m) => {
                if m.priority == MovePriority::Low {
                    low_started_first.get_or_insert(now);
                    low_bytes += m.bytes;
                } else if low_started_first.is_some() {
                    critical_after_low += 1;
                }
                if m.priority == MovePriority::Critical {
                    critical_done_at = critical_done_at.max(now + take);
                }
                running.push((now + take, id));
            }
            Poll::Wait(w) => {
                // Finish what ends before the wait is over, then move the clock.
                let until = now + w;
                while let Some(&(end, id)) = running.first() {
                    if end > until {
                        break;
                    }
                    running.remove(0);
                    s.complete(id);
                }
                now = until;
            }
            Poll::Busy => {
                let (end, id) = running.remove(0);
                now = now.max(end);
                s.complete(id);
            }
            Poll::Done => break,
        }
    }
    let p = s.progress();
    ensure!(p.done == p.total, "the scheduler finished every move");
    ensure!(
        critical_after_low == 0,
        "a critical move started after a low one"
    );
    let low_time = now.saturating_sub(low_started_first.unwrap_or_default());
    let rate = low_bytes as f64 / low_time.as_secs_f64() / 1e6;
    println!(
        "# scheduler (4 at a time, 10 MB/s for throttled moves, virtual clock): critical moves \
         done after {:.1} s, then {:.1} GB of low moves over {:.0} s",
        critical_done_at.as_secs_f64(),
        low_bytes as f64 / 1e9,
        low_time.as_secs_f64()
    );
    report("rebalance_low_rate_mb_per_s", rate, "MB/s");
    Ok(())
}

fn routing(cfg: &Config) -> Result<()> {
    // One membership change every 50,000 requests, in both modes.
    let sim_cfg = SimConfig {
        requests: cfg.sim_requests,
        changes: (cfg.sim_requests / 50_000) as usize,
        ..SimConfig::default()
    };
    let (r, took) = util::timed(|| sim::run(&sim_cfg));
    let r = r?;
    println!(
        "# routing simulation: {} nodes, {} spaces, {} requests from {} clients, {} membership \
         changes (join, leave, failure, rejoin, in turn), gossip lag up to {} requests; {:.1} s",
        sim_cfg.nodes,
        sim_cfg.spaces,
        r.requests,
        sim_cfg.clients,
        r.changes,
        sim_cfg.max_gossip_lag,
        took.as_secs_f64()
    );
    let pct = |x: u64| 100.0 * x as f64 / r.requests as f64;
    println!(
        "#   misrouted {} ({} corrected by one forward, {} redirected, {} first sent to a departed \
         node); senders that learned the new epoch: {} of {}; most forwards on one request: {}, \
         most sends: {}; served by a primary of a stale table: {:.3}%; nodes caught up {} times",
        r.misrouted,
        r.corrected_by_one_forward,
        r.redirected,
        r.unreachable,
        r.senders_learned,
        r.misrouted,
        r.max_forwards,
        r.max_attempts,
        pct(r.served_by_stale_primary),
        r.catch_ups
    );
    report("misroute_pct", pct(r.misrouted), "%");
    report("misroute_loops", r.loops as f64, "requests");
    compare(
        "misroute_loops",
        r.loops as f64,
        "requests",
        Better::Lower,
        Some(0.0),
        None,
    );
    report("misroute_max_forwards", f64::from(r.max_forwards), "hops");
    report(
        "misroute_sender_learned_pct",
        if r.misrouted == 0 {
            100.0
        } else {
            100.0 * r.senders_learned as f64 / r.misrouted as f64
        },
        "%",
    );
    ensure!(r.loops == 0, "a request looped");
    Ok(())
}
