//! aarch64: Image + FDT boot, GICv3, PSCI.
