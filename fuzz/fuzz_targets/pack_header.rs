#![no_main]
//! Fuzz target `pack_header`: see fuzz/checks.rs (`check_pack_header`) for the invariants.

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    checks::check_pack_header(data);
});
