//! Tests of the NUMA topology reader and placer (against fake sysfs trees).

use super::*;

/// Builds a sysfs-like tree: `online` plus `node<N>/cpulist` files.
fn tree(online: Option<&str>, cpulists: &[(u32, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(online) = online {
        fs::write(dir.path().join("online"), online).unwrap();
    }
    for (id, cpulist) in cpulists {
        let node_dir = dir.path().join(format!("node{id}"));
        fs::create_dir_all(&node_dir).unwrap();
        fs::write(node_dir.join("cpulist"), cpulist).unwrap();
    }
    dir
}

fn two_nodes() -> NumaTopology {
    let dir = tree(Some("0-1\n"), &[(0, "0-3,8-11\n"), (1, "4-7,12-15\n")]);
    NumaTopology::read_from(dir.path()).unwrap()
}

#[test]
fn numa_parse_cpulist_cases() {
    assert_eq!(parse_cpulist("0"), Ok(vec![0]));
    assert_eq!(parse_cpulist("0-3"), Ok(vec![0, 1, 2, 3]));
    assert_eq!(parse_cpulist("0-1,4,6-7"), Ok(vec![0, 1, 4, 6, 7]));
    assert_eq!(parse_cpulist(" 2-3 \n"), Ok(vec![2, 3]));
    assert_eq!(parse_cpulist(""), Ok(vec![]));
    assert_eq!(parse_cpulist("\n"), Ok(vec![]));
    assert_eq!(parse_cpulist("3,1-2,2"), Ok(vec![1, 2, 3]));
    for bad in [
        "3-1",
        "a",
        "1-",
        "-1",
        "1,,2",
        "1,",
        "0-1-2",
        "+1",
        "0-4294967295",
        "99999999999",
    ] {
        let err = parse_cpulist(bad).expect_err(bad);
        assert!(!err.is_empty(), "{bad:?}");
    }
    assert!(parse_cpulist("3-1").unwrap_err().contains("reversed"));
    assert!(parse_cpulist("a").unwrap_err().contains("\"a\""));
}

#[test]
fn numa_one_node_tree() {
    let dir = tree(Some("0\n"), &[(0, "0-1\n")]);
    let topo = NumaTopology::read_from(dir.path()).unwrap();
    assert_eq!(
        topo.nodes(),
        &[NumaNode {
            id: 0,
            cpus: vec![0, 1]
        }]
    );
    assert!(!topo.is_multi_node());
    assert_eq!(topo.node_for_space("anything"), None);
}

#[test]
fn numa_two_node_tree() {
    let topo = two_nodes();
    assert!(topo.is_multi_node());
    assert_eq!(
        topo.nodes(),
        &[
            NumaNode {
                id: 0,
                cpus: vec![0, 1, 2, 3, 8, 9, 10, 11]
            },
            NumaNode {
                id: 1,
                cpus: vec![4, 5, 6, 7, 12, 13, 14, 15]
            },
        ]
    );
    assert_eq!(topo.node(1).map(|n| n.id), Some(1));
    assert_eq!(topo.node(2), None);
}

#[test]
fn numa_memoryless_cpuless_node() {
    let dir = tree(Some("0-1\n"), &[(0, "0-3\n"), (1, "\n")]);
    let topo = NumaTopology::read_from(dir.path()).unwrap();
    assert!(topo.is_multi_node());
    assert_eq!(
        topo.nodes()[1],
        NumaNode {
            id: 1,
            cpus: vec![]
        }
    );
    // Only the node with CPUs is ever chosen.
    for i in 0..50 {
        assert_eq!(topo.node_for_space(&format!("space-{i}")), Some(0));
    }
    let placer = NumaPlacer::new(topo);
    let err = placer.pin_current_thread(1).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn numa_sparse_online_nodes() {
    let dir = tree(Some("0,2\n"), &[(0, "0-1\n"), (2, "2-3\n")]);
    let topo = NumaTopology::read_from(dir.path()).unwrap();
    let ids: Vec<u32> = topo.nodes().iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![0, 2]);
    assert_eq!(topo.node_for_space("a"), Some(0));
    assert_eq!(topo.node_for_space("inbox"), Some(2));
}

#[test]
fn numa_malformed_cpulist_is_invalid_data() {
    let dir = tree(Some("0-1\n"), &[(0, "0-3\n"), (1, "4-x\n")]);
    let err = NumaTopology::read_from(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.contains("node1"), "{msg}");
    assert!(msg.contains("cpulist"), "{msg}");
}

#[test]
fn numa_malformed_online_is_invalid_data() {
    for online in ["zero\n", "1-0\n", "\n"] {
        let dir = tree(Some(online), &[(0, "0\n")]);
        let err = NumaTopology::read_from(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{online:?}");
        assert!(err.to_string().contains("online"), "{err}");
    }
}

#[test]
fn numa_non_utf8_cpulist_is_invalid_data() {
    let dir = tree(Some("0\n"), &[]);
    let node_dir = dir.path().join("node0");
    fs::create_dir_all(&node_dir).unwrap();
    fs::write(node_dir.join("cpulist"), [0xff, 0xfe, b'\n']).unwrap();
    let err = NumaTopology::read_from(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("cpulist"), "{err}");
}

#[test]
fn numa_missing_cpulist_names_file() {
    let dir = tree(Some("0-1\n"), &[(0, "0\n")]);
    let err = NumaTopology::read_from(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("node1"), "{err}");
}

#[test]
fn numa_missing_online_scans_node_dirs() {
    let dir = tree(None, &[(1, "2-3\n"), (0, "0-1\n")]);
    fs::create_dir_all(dir.path().join("power")).unwrap();
    let topo = NumaTopology::read_from(dir.path()).unwrap();
    let ids: Vec<u32> = topo.nodes().iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![0, 1]);

    let empty = tempfile::tempdir().unwrap();
    let topo = NumaTopology::read_from(empty.path()).unwrap();
    assert_eq!(topo.nodes().len(), 1);
}

#[test]
fn numa_missing_root_falls_back_to_single_node() {
    let dir = tempfile::tempdir().unwrap();
    let topo = NumaTopology::read_from(&dir.path().join("no-such-dir")).unwrap();
    let n = std::thread::available_parallelism().unwrap().get() as u32;
    assert_eq!(
        topo.nodes(),
        &[NumaNode {
            id: 0,
            cpus: (0..n).collect()
        }]
    );
    assert!(!topo.is_multi_node());
}

#[test]
fn numa_fnv1a64_vectors() {
    assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a64(b"space-1"), 0x9cb2f9dc140defeb);
    assert_eq!(fnv1a64(b"projects/engram"), 0xbe8344b9bc86246c);
}

#[test]
fn numa_node_for_space_is_stable_and_distributed() {
    let topo = two_nodes();
    // Fixed expectations: fnv1a64(key) % 2 indexes [node 0, node 1].
    assert_eq!(topo.node_for_space(""), Some(1));
    assert_eq!(topo.node_for_space("a"), Some(0));
    assert_eq!(topo.node_for_space("default"), Some(0));
    assert_eq!(topo.node_for_space("space-1"), Some(1));
    assert_eq!(topo.node_for_space("space-2"), Some(0));
    assert_eq!(topo.node_for_space("inbox"), Some(1));
    assert_eq!(topo.node_for_space("archive"), Some(1));
    // Same answer every time, and from an independently read topology.
    let again = two_nodes();
    let mut counts = [0usize; 2];
    for i in 0..200 {
        let key = format!("space-{i}");
        let node = topo.node_for_space(&key).unwrap();
        assert_eq!(topo.node_for_space(&key), Some(node));
        assert_eq!(again.node_for_space(&key), Some(node));
        counts[node as usize] += 1;
    }
    assert!(counts[0] > 50 && counts[1] > 50, "{counts:?}");
}

#[test]
fn numa_placer_single_node_is_noop() {
    let dir = tree(Some("0\n"), &[(0, "0-1\n")]);
    let placer = NumaPlacer::new(NumaTopology::read_from(dir.path()).unwrap());
    assert!(!placer.is_multi_node());
    assert_eq!(placer.node_for_space("space"), None);
    let buf = vec![7u8; 10_000];
    placer.bind_memory(0, &buf).unwrap();
    placer.bind_memory(5, &buf).unwrap();
    placer.pin_current_thread(0).unwrap();
    placer.pin_current_thread(5).unwrap();
}

#[test]
fn numa_placer_rejects_unknown_node() {
    let placer = NumaPlacer::new(two_nodes());
    let buf = vec![0u8; 64];
    assert_eq!(
        placer.bind_memory(9, &buf).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        placer.pin_current_thread(9).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    // An empty region needs no syscall.
    placer.bind_memory(0, &[]).unwrap();
}

/// Exercises the real syscalls through a two-node topology whose node 0
/// is this machine's node 0 and first allowed CPU.
#[cfg(target_os = "linux")]
#[test]
fn numa_placer_syscalls_on_this_machine() {
    std::thread::spawn(|| {
        let allowed = current_affinity();
        let cpu = allowed[0];
        let topo = NumaTopology {
            nodes: vec![
                NumaNode {
                    id: 0,
                    cpus: vec![cpu],
                },
                NumaNode {
                    id: 1,
                    cpus: vec![cpu + 1],
                },
            ],
        };
        let placer = NumaPlacer::new(topo);

        placer.pin_current_thread(0).unwrap();
        assert_eq!(current_affinity(), vec![cpu]);

        // mbind may be denied by a sandbox (seccomp without
        // CAP_SYS_NICE); anything else must succeed.
        let buf = vec![1u8; 3 * page_size() + 17];
        match placer.bind_memory(0, &buf[5..]) {
            Ok(()) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                ),
                "{e}"
            ),
        }
        assert!(buf.iter().all(|&b| b == 1));
    })
    .join()
    .unwrap();
}

#[cfg(target_os = "linux")]
fn current_affinity() -> Vec<u32> {
    // SAFETY: cpu_set_t is plain data for which all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads `set`, and the index is below
        // CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c as u32)
        .collect()
}

#[test]
fn numa_bitmask_sets_bits() {
    #[cfg(target_os = "linux")]
    {
        let mask = bitmask(&[0, 3, 64], 1);
        assert_eq!(mask.len(), if libc::c_ulong::BITS == 64 { 2 } else { 3 });
        assert_eq!(mask[0], 0b1001);
    }
}

#[test]
fn numa_detect_on_this_machine() {
    let topo = NumaTopology::detect().unwrap();
    assert!(!topo.nodes().is_empty());
    assert!(topo.nodes().iter().any(|n| !n.cpus.is_empty()));
    let placer = NumaPlacer::new(topo.clone());
    if let Some(node) = placer.node_for_space("detect") {
        assert!(topo.node(node).is_some());
    }
}
