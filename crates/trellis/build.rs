//! Link layout of the release `trellis` binary.
//!
//! Two linker options keep an idle sidecar's resident memory small; both matter only to the
//! release build that ships, so debug and test builds link as cargo would by default:
//!
//! * `--symbol-ordering-file link/startup.order` puts the functions a sidecar runs at
//!   start-up and on the common request paths first in `.text`, together. The kernel maps
//!   code in 64 KiB windows around each page it faults in, so scattered over the whole
//!   `.text` those ~4 MB of functions would keep most of it resident. The list comes from
//!   `scripts/link-order`; names it has that the build no longer does are skipped.
//! * `-z pack-relative-relocs` stores the ~46,000 relative relocations of a PIE as RELR
//!   (a few KiB) instead of RELA (~1 MiB the loader reads at every start).
//!
//! Only for x86_64 Linux with glibc, where rustc links with LLD by default (1.90+) and glibc
//! reads RELR (2.36+); a build that picks its own linker (`-C linker`, `CARGO_TARGET_*_LINKER`)
//! or sets `TRELLIS_LINK_LAYOUT=off` is left alone.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=link/startup.order");
    println!("cargo:rerun-if-env-changed=TRELLIS_LINK_LAYOUT");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let wanted = var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("TRELLIS_LINK_LAYOUT") != "off"
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        && env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_none();
    if !wanted {
        return;
    }
    let order = format!("{}/link/startup.order", var("CARGO_MANIFEST_DIR"));
    for arg in [
        format!("-Wl,--symbol-ordering-file={order}"),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
        "-Wl,-z,pack-relative-relocs".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bin=trellis={arg}");
    }
}
