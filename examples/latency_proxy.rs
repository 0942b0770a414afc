//! A relay that adds a fixed delay to every request, for benchmarks
//! against a "distant" S3 store on loopback (scripts/bench-restore-latency.sh).
//! It is tests/common/faultproxy.rs with no faults and `delay` set.
//!
//! ```text
//! latency_proxy UPSTREAM_URL DELAY_MS
//! ```
//!
//! Prints its own endpoint (`http://127.0.0.1:PORT`) on stdout, then relays
//! until killed.

#[path = "../tests/common/faultproxy.rs"]
mod faultproxy;

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(upstream), Some(ms)) = (args.get(1), args.get(2).and_then(|s| s.parse().ok())) else {
        eprintln!("usage: latency_proxy UPSTREAM_URL DELAY_MS");
        std::process::exit(2);
    };
    let proxy = faultproxy::FaultProxy::start(
        upstream,
        faultproxy::FaultRates::latency(Duration::from_millis(ms)),
        0,
    );
    println!("{}", proxy.endpoint);
    std::io::stdout().flush().expect("stdout");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
