//! Kernel access: the loaded filter, its maps, the pins under bpffs, the kernel memory of the
//! maps, and the raw system calls aya does not wrap ([`sys`]). Imports only the model.

pub mod filter;
pub mod maps;
pub mod memory;
pub mod pins;
pub mod privilege;
pub mod sys;

pub use filter::{Filter, FilterError, Verdict};
pub use maps::{Maps, MapsError};
pub use pins::{PinRoot, PinsError};
