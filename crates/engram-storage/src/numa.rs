//! NUMA awareness for the storage engine.
//!
//! The topology is read from the kernel's sysfs tree at
//! `/sys/devices/system/node`:
//!
//! * `online` lists the online nodes in cpulist format (`0-1,3`);
//! * `node<N>/cpulist` lists the CPUs of node `N` in the same format. A node
//!   without CPUs (a memory-only node) has an empty line there.
//!
//! With several nodes, every space is assigned a node ([`NumaPlacer::node_for_space`]),
//! the threads working on the space are pinned to that node's CPUs
//! ([`NumaPlacer::pin_current_thread`]) and the space's mapped pages are bound
//! to it with `mbind(MPOL_PREFERRED)` ([`NumaPlacer::bind_memory`]). With a
//! single node (or on a system without NUMA support, or off Linux) placement
//! is a no-op, which [`NumaPlacer::new`] says once in the log.
//!
//! Reading the topology never panics on malformed sysfs content: it returns
//! an [`io::Error`] of kind [`io::ErrorKind::InvalidData`] naming the file.

use std::fs;
use std::io;
use std::path::Path;

/// Where the kernel publishes the NUMA topology.
pub const SYSFS_NODE_ROOT: &str = "/sys/devices/system/node";

/// Largest CPU or node id accepted from a cpulist (exclusive). Far above any
/// real kernel's `NR_CPUS`; it bounds the memory a malformed list such as
/// `0-4294967295` could make us allocate.
const MAX_LIST_ID: u32 = 1 << 20;

/// `MPOL_PREFERRED` from `<linux/mempolicy.h>`.
#[cfg(target_os = "linux")]
const MPOL_PREFERRED: libc::c_int = 1;

/// One NUMA node: its id and the CPUs that belong to it (sorted, unique;
/// empty for a memory-only node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    pub id: u32,
    pub cpus: Vec<u32>,
}

/// The machine's NUMA nodes, ordered by node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaTopology {
    nodes: Vec<NumaNode>,
}

impl NumaTopology {
    /// Reads the topology of this machine from [`SYSFS_NODE_ROOT`].
    pub fn detect() -> io::Result<NumaTopology> {
        Self::read_from(Path::new(SYSFS_NODE_ROOT))
    }

    /// Reads the topology from a sysfs tree shaped like
    /// `/sys/devices/system/node`.
    ///
    /// * If `root` does not exist (kernel without NUMA support, non-Linux
    ///   system, no sysfs), the result is a single node 0 holding CPUs
    ///   `0..available_parallelism`.
    /// * Otherwise the nodes are those named by `root/online`; if that file
    ///   is missing, the `node<N>` directories under `root` are used instead,
    ///   and if there are none either, the single-node fallback applies.
    /// * Each node's CPUs come from `root/node<N>/cpulist`.
    ///
    /// Malformed content yields an error of kind `InvalidData` naming the
    /// file; other I/O errors keep their kind and also name the file.
    pub fn read_from(root: &Path) -> io::Result<NumaTopology> {
        match fs::metadata(root) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::single_node_fallback());
            }
            Err(e) => return Err(annotate(e, root)),
        }

        let online_path = root.join("online");
        let node_ids = match read_text(&online_path) {
            Ok(text) => {
                let ids = parse_cpulist(&text).map_err(|msg| invalid_data(&online_path, &msg))?;
                if ids.is_empty() {
                    return Err(invalid_data(&online_path, "lists no online nodes"));
                }
                ids
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let ids = scan_node_dirs(root)?;
                if ids.is_empty() {
                    return Ok(Self::single_node_fallback());
                }
                ids
            }
            Err(e) => return Err(e),
        };

        let mut nodes = Vec::with_capacity(node_ids.len());
        for id in node_ids {
            let path = root.join(format!("node{id}")).join("cpulist");
            let text = read_text(&path)?;
            let cpus = parse_cpulist(&text).map_err(|msg| invalid_data(&path, &msg))?;
            nodes.push(NumaNode { id, cpus });
        }
        Ok(NumaTopology { nodes })
    }

    /// One node 0 with CPUs `0..n`, where `n` is the available parallelism
    /// (1 if unknown).
    fn single_node_fallback() -> NumaTopology {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(MAX_LIST_ID);
        NumaTopology {
            nodes: vec![NumaNode {
                id: 0,
                cpus: (0..n).collect(),
            }],
        }
    }

    /// True when the machine has more than one NUMA node.
    pub fn is_multi_node(&self) -> bool {
        self.nodes.len() > 1
    }

    /// The nodes, ordered by id.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn nodes(&self) -> &[NumaNode] {
        &self.nodes
    }

    /// The node with the given id, if it exists.
    pub fn node(&self, id: u32) -> Option<&NumaNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node a space is assigned to, or `None` on a single-node machine.
    ///
    /// The assignment is stable across runs and machines with the same
    /// topology: the 64-bit FNV-1a hash of the key's UTF-8 bytes (offset
    /// basis `0xcbf29ce484222325`, prime `0x100000001b3`) taken modulo the
    /// number of nodes that have CPUs, indexing those nodes in id order.
    /// Memory-only nodes are never chosen, since work has to run somewhere.
    /// `std::hash` is deliberately not used: its output is not guaranteed to
    /// be stable across Rust releases.
    pub fn node_for_space(&self, space_key: &str) -> Option<u32> {
        if !self.is_multi_node() {
            return None;
        }
        let with_cpus: Vec<u32> = self
            .nodes
            .iter()
            .filter(|n| !n.cpus.is_empty())
            .map(|n| n.id)
            .collect();
        if with_cpus.is_empty() {
            return None;
        }
        let index = fnv1a64(space_key.as_bytes()) % with_cpus.len() as u64;
        Some(with_cpus[index as usize])
    }
}

/// 64-bit FNV-1a over `bytes`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// Parses a kernel cpulist such as `0-3,8-11` or `0,2,4-5` into sorted,
/// unique ids. Surrounding whitespace is ignored and an empty (or
/// all-whitespace) list yields an empty vector. Reversed ranges (`3-1`),
/// open ranges (`1-`), empty items and anything non-numeric are rejected.
pub fn parse_cpulist(s: &str) -> Result<Vec<u32>, String> {
    let s = s.trim();
    let mut ids = Vec::new();
    if s.is_empty() {
        return Ok(ids);
    }
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty item in cpulist {s:?}"));
        }
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (parse_id(lo, item)?, parse_id(hi, item)?),
            None => {
                let id = parse_id(item, item)?;
                (id, id)
            }
        };
        if lo > hi {
            return Err(format!("reversed range {item:?} in cpulist {s:?}"));
        }
        ids.extend(lo..=hi);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Parses one id of a cpulist item, rejecting anything but plain decimal
/// digits and ids at or above [`MAX_LIST_ID`].
fn parse_id(text: &str, item: &str) -> Result<u32, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid cpulist item {item:?}: expected N or N-M"));
    }
    match text.parse::<u32>() {
        Ok(id) if id < MAX_LIST_ID => Ok(id),
        _ => Err(format!(
            "invalid cpulist item {item:?}: id {text} is out of range (max {})",
            MAX_LIST_ID - 1
        )),
    }
}

/// Ids of the `node<N>` directories directly under `root`, sorted.
fn scan_node_dirs(root: &Path) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| annotate(e, root))? {
        let entry = entry.map_err(|e| annotate(e, root))?;
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_prefix("node")) else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match digits.parse::<u32>() {
            Ok(id) if id < MAX_LIST_ID => ids.push(id),
            _ => {
                return Err(invalid_data(
                    &entry.path(),
                    "node directory id is out of range",
                ))
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn read_text(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(|e| annotate(e, path))
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn invalid_data(path: &Path, msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {msg}", path.display()),
    )
}

/// Applies a [`NumaTopology`]: assigns spaces to nodes, pins threads and
/// binds memory. Every operation is a no-op on a single-node machine and off
/// Linux.
///
/// Placement is advisory. `bind_memory` and `pin_current_thread` report
/// kernel refusals (for instance a container's seccomp policy denying
/// `mbind`) as errors; callers may log them and carry on, since correctness
/// never depends on placement.
#[derive(Debug, Clone)]
pub struct NumaPlacer {
    topology: NumaTopology,
}

impl NumaPlacer {
    /// Creates a placer and logs, once, whether placement is active:
    /// "NUMA: 1 node, placement is a no-op" or
    /// "NUMA: N nodes, spaces are assigned to nodes".
    pub fn new(topology: NumaTopology) -> NumaPlacer {
        if topology.is_multi_node() {
            tracing::info!(
                "NUMA: {} nodes, spaces are assigned to nodes",
                topology.nodes.len()
            );
        } else {
            tracing::info!("NUMA: 1 node, placement is a no-op");
        }
        NumaPlacer { topology }
    }

    /// The topology this placer applies.
    #[allow(dead_code)]
    pub fn topology(&self) -> &NumaTopology {
        &self.topology
    }

    /// True when placement does anything (more than one node).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_multi_node(&self) -> bool {
        self.topology.is_multi_node()
    }

    /// The node a space is assigned to; see [`NumaTopology::node_for_space`].
    pub fn node_for_space(&self, space_key: &str) -> Option<u32> {
        self.topology.node_for_space(space_key)
    }

    /// Asks the kernel to place the pages covering `region` on `node`
    /// (`mbind` with `MPOL_PREFERRED`, over the page-aligned range that
    /// covers the region). Pages already resident are not moved; new faults
    /// prefer the node. A no-op returning `Ok` on a single node, for an empty
    /// region, or off Linux. An unknown node is `InvalidInput`.
    pub fn bind_memory(&self, node: u32, region: &[u8]) -> io::Result<()> {
        if !self.topology.is_multi_node() || region.is_empty() {
            return Ok(());
        }
        if self.topology.node(node).is_none() {
            return Err(unknown_node(node));
        }
        #[cfg(target_os = "linux")]
        {
            mbind_preferred(node, region)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(())
        }
    }

    /// Restricts the current thread to the CPUs of `node`. A no-op returning
    /// `Ok` on a single node or off Linux. An unknown node, or a node without
    /// CPUs, is `InvalidInput`.
    // No caller outside tests yet: pinning the threads that work on a space to its node is
    // the placer's API for the engine, which does not pin them today.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn pin_current_thread(&self, node: u32) -> io::Result<()> {
        if !self.topology.is_multi_node() {
            return Ok(());
        }
        let Some(numa_node) = self.topology.node(node) else {
            return Err(unknown_node(node));
        };
        if numa_node.cpus.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NUMA node {node} has no CPUs to pin a thread to"),
            ));
        }
        #[cfg(target_os = "linux")]
        {
            set_affinity(&numa_node.cpus)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(())
        }
    }
}

fn unknown_node(node: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("unknown NUMA node {node}"),
    )
}

#[cfg(target_os = "linux")]
fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value; it has no memory
    // safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 && (size as usize).is_power_of_two() {
        size as usize
    } else {
        4096
    }
}

/// A bitmask of `c_ulong` words with every id in `bits` set and at least
/// `min_words` words.
#[cfg(target_os = "linux")]
fn bitmask(bits: &[u32], min_words: usize) -> Vec<libc::c_ulong> {
    let word_bits = libc::c_ulong::BITS as usize;
    let needed = bits
        .iter()
        .map(|&b| b as usize / word_bits + 1)
        .max()
        .unwrap_or(0);
    let mut mask: Vec<libc::c_ulong> = vec![0; needed.max(min_words)];
    for &b in bits {
        let b = b as usize;
        mask[b / word_bits] |= 1 << (b % word_bits);
    }
    mask
}

#[cfg(target_os = "linux")]
fn mbind_preferred(node: u32, region: &[u8]) -> io::Result<()> {
    let page = page_size();
    let addr = region.as_ptr() as usize;
    let start = addr & !(page - 1);
    let end = addr
        .checked_add(region.len())
        .and_then(|e| e.checked_add(page - 1))
        .map(|e| e & !(page - 1))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region wraps around"))?;
    let len = end - start;

    // One spare zero word after the node's word: the kernel reads
    // `maxnode - 1` bits (a historical off-by-one), so passing every bit of
    // the mask keeps `node` in range without any ambiguity.
    let word_bits = libc::c_ulong::BITS as usize;
    let words = node as usize / word_bits + 2;
    let mask = bitmask(&[node], words);
    let maxnode = (mask.len() * word_bits) as libc::c_ulong;

    // SAFETY: [start, start + len) is the page-aligned range covering
    // `region`, a live borrowed slice, so every page in it is mapped in this
    // process. MPOL_PREFERRED without MPOL_MF_MOVE* flags only records a
    // placement preference for future page allocations; it neither moves nor
    // changes memory contents. `mask` is a live buffer of `maxnode` bits that
    // the kernel only reads during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            start as *mut libc::c_void,
            len as libc::c_ulong,
            MPOL_PREFERRED,
            mask.as_ptr(),
            maxnode,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("mbind to NUMA node {node} failed: {e}"),
        ))
    }
}

#[cfg(target_os = "linux")]
#[cfg_attr(not(test), allow(dead_code))]
fn set_affinity(cpus: &[u32]) -> io::Result<()> {
    // At least as large as a `cpu_set_t`, larger if a CPU id needs it.
    let min_words =
        std::mem::size_of::<libc::cpu_set_t>().div_ceil(std::mem::size_of::<libc::c_ulong>());
    let mask = bitmask(cpus, min_words);
    let size = mask.len() * std::mem::size_of::<libc::c_ulong>();

    // SAFETY: `mask` is a live, c_ulong-aligned buffer of `size` bytes, at
    // least `size_of::<cpu_set_t>()` (an array of c_ulong), so the pointer is
    // valid for a cpu_set_t and for every byte the kernel reads (`size`).
    // pid 0 means the calling thread; changing its affinity has no memory
    // safety implications.
    let rc = unsafe { libc::sched_setaffinity(0, size, mask.as_ptr().cast::<libc::cpu_set_t>()) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("sched_setaffinity to CPUs {cpus:?} failed: {e}"),
        ))
    }
}

#[cfg(test)]
mod tests;
