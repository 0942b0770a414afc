#![no_main]
//! Fuzz target `tree_node`: see fuzz/checks.rs (`check_tree_node`) for the invariants.

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    checks::check_tree_node(data);
});
