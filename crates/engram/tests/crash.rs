//! Crash test over HTTP: concurrent writers against the real server, SIGKILL at a random moment,
//! restart on the same data directory: every memory answered 201 is there with its content,
//! and the server takes writes again. Several seeded rounds on one directory (CI runs 4;
//! `ENGRAM_HTTP_CRASH_ROUNDS=50` runs more).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::Server;
use reqwest::blocking::Client;
use serde_json::json;

/// splitmix64: the rounds are reproducible from their seed.
fn next(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn content_of(id: &str) -> String {
    format!("memory {id}: what the agent saw, in about sixty bytes of text")
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let rounds: u64 = std::env::var("ENGRAM_HTTP_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut acknowledged: Vec<String> = Vec::new();
    for seed in 1..=rounds {
        let mut rng = seed * 7919;
        let mut server = Server::start(dir.path());
        let base = server.base.clone();
        let stop = AtomicBool::new(false);
        let acked: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let kill_after = Duration::from_millis(150 + next(&mut rng) % 500);
        std::thread::scope(|s| {
            for w in 0..8 {
                let (client, base, stop, acked) = (&client, &base, &stop, &acked);
                s.spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("r{seed}-w{w}-{i}");
                        i += 1;
                        let sent = client
                            .post(format!("{base}/api/v1/memories/remember"))
                            .json(&json!({"id": id, "content": content_of(&id)}))
                            .send();
                        match sent {
                            Ok(r) if r.status().as_u16() == 201 => {
                                acked.lock().unwrap().push(id);
                            }
                            Ok(r) => panic!("unexpected answer {}", r.status()),
                            // The server was killed mid-request: not acknowledged.
                            Err(_) => break,
                        }
                    }
                });
            }
            std::thread::sleep(kill_after);
            server.child.kill().expect("SIGKILL the server");
            server.child.wait().unwrap();
            stop.store(true, Ordering::Relaxed);
        });
        let acked = acked.into_inner().unwrap();
        assert!(!acked.is_empty(), "round {seed}: no write was acknowledged");
        acknowledged.extend(acked);

        // Restart: everything acknowledged so far, in every round, is there and intact.
        let server = Server::start(dir.path());
        let base = server.base.clone();
        for id in &acknowledged {
            let r = client
                .get(format!("{base}/api/v1/memories/{id}"))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "round {seed}: {id} lost");
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(v["content"], content_of(id), "round {seed}: {id} damaged");
        }
        let r = client
            .post(format!("{base}/api/v1/memories/remember"))
            .json(&json!({"content": "written after the restart"}))
            .send()
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "round {seed}: writes refused after restart"
        );
        drop(server); // SIGKILL again
    }
}
