//! CRC32C speed.

use std::time::Instant;

use rand::Rng;

use super::Config;
use crate::util::{self, compare, report, Better};

pub(super) fn crc(cfg: &Config) {
    let mut buf = vec![0u8; 64 << 20];
    util::rng(7).fill(&mut buf[..]);
    let mut crc = crc32c::crc32c(&buf); // warm-up pass
    let start = Instant::now();
    let mut bytes = 0u64;
    while bytes < 4 * buf.len() as u64 || start.elapsed() < cfg.crc_time {
        crc = crc32c::crc32c_append(crc, &buf);
        bytes += buf.len() as u64;
    }
    let gb_per_s = bytes as f64 / 1e9 / start.elapsed().as_secs_f64();
    std::hint::black_box(crc);
    println!(
        "# crc32c over a 64 MiB buffer, {:.1} GB in total (hardware: {})",
        bytes as f64 / 1e9,
        if cfg!(target_arch = "x86_64") {
            "SSE4.2 when available"
        } else {
            "platform"
        }
    );
    report("crc32c_gb_per_s", gb_per_s, "GB/s");
    compare(
        "crc32c_gb_per_s",
        gb_per_s,
        "GB/s",
        Better::Higher,
        Some(4.0),
        Some(10.0),
    );
}
