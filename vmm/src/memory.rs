//! Guest RAM.

/// The guest memory type every device and loader uses.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
