#![no_std]
// The XDP program is the `guard-ebpf` binary (src/main.rs), built for bpfel-unknown-none by
// guard-userspace/build.rs. This empty library lets cargo track the crate as a build dependency.
