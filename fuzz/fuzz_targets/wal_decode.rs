#![no_main]
//! Fuzz target `wal_decode`: see fuzz/checks.rs (`check_wal`) for the
//! invariants: the WAL record reader (`format::wal_records::scan`) and the
//! WAL object decoder (`format::wal::decode`).

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    checks::check_wal(data);
});
