#![no_main]
//! Fuzz target `index`: see fuzz/checks.rs (`check_index`) for the invariants.

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    checks::check_index(data);
});
