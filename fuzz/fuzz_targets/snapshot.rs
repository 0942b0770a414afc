#![no_main]
//! Fuzz target `snapshot`: see fuzz/checks.rs (`check_snapshot`) for the invariants.

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    checks::check_snapshot(data);
});
