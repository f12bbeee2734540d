//! The flattened device tree the kernel boots from: CPUs (started through
//! PSCI), memory, GICv3, the architected timer, PSCI, the chosen node
//! (command line, initrd, console), the UART and the virtio-mmio devices.

use super::layout::{
    gic_redist_size, MmioDevice, DRAM_START, FDT_MAX_SIZE, GIC_DIST_ADDR, GIC_DIST_SIZE,
    GIC_MAINTENANCE_PPI, GIC_REDIST_ADDR, MAX_VCPUS, MPIDR_AFFINITY_MASK, SERIAL_ADDR,
    SERIAL_CLOCK_HZ, SERIAL_SIZE, SERIAL_SPI, TIMER_PPIS,
};
use super::Error;
use vm_fdt::FdtWriter;

/// The GIC's phandle, every interrupt's parent.
pub const GIC_PHANDLE: u32 = 1;

/// Interrupt specifier types (first cell) and flags (third cell).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;

/// What goes into the tree.
#[derive(Clone, Debug)]
pub struct FdtConfig<'a> {
    /// MPIDR of each vCPU, in vCPU order ([`super::layout::vcpu_mpidr`]).
    pub vcpu_mpidrs: &'a [u64],
    pub mem_size: u64,
    pub cmdline: &'a str,
    /// The initrd's start and size.
    pub initrd: Option<(u64, u64)>,
    pub virtio_mmio: &'a [MmioDevice],
}

/// The UART's node path, also `stdout-path`.
pub fn serial_path() -> String {
    format!("/uart@{SERIAL_ADDR:x}")
}

fn reg(addr: u64, size: u64) -> [u64; 2] {
    [addr, size]
}

/// Builds the device tree blob.
pub fn create(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, Error> {
    let vcpus = cfg.vcpu_mpidrs.len();
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount(vcpus));
    }
    let mut fdt = FdtWriter::new().map_err(Error::Fdt)?;
    let e = Error::Fdt;

    let root = fdt.begin_node("").map_err(e)?;
    fdt.property_string("compatible", "linux,dummy-virt")
        .map_err(e)?;
    fdt.property_string("model", "ssv-vmm").map_err(e)?;
    fdt.property_u32("#address-cells", 2).map_err(e)?;
    fdt.property_u32("#size-cells", 2).map_err(e)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)
        .map_err(e)?;

    let cpus = fdt.begin_node("cpus").map_err(e)?;
    // Two cells: `reg` is the MPIDR's affinity fields, Aff3 included.
    fdt.property_u32("#address-cells", 2).map_err(e)?;
    fdt.property_u32("#size-cells", 0).map_err(e)?;
    for mpidr in cfg.vcpu_mpidrs {
        let hwid = mpidr & MPIDR_AFFINITY_MASK;
        let cpu = fdt.begin_node(&format!("cpu@{hwid:x}")).map_err(e)?;
        fdt.property_string("device_type", "cpu").map_err(e)?;
        fdt.property_string("compatible", "arm,arm-v8").map_err(e)?;
        fdt.property_string("enable-method", "psci").map_err(e)?;
        fdt.property_u64("reg", hwid).map_err(e)?;
        fdt.end_node(cpu).map_err(e)?;
    }
    fdt.end_node(cpus).map_err(e)?;

    let memory = fdt
        .begin_node(&format!("memory@{DRAM_START:x}"))
        .map_err(e)?;
    fdt.property_string("device_type", "memory").map_err(e)?;
    fdt.property_array_u64("reg", &reg(DRAM_START, cfg.mem_size))
        .map_err(e)?;
    fdt.end_node(memory).map_err(e)?;

    let chosen = fdt.begin_node("chosen").map_err(e)?;
    fdt.property_string("bootargs", cfg.cmdline).map_err(e)?;
    fdt.property_string("stdout-path", &serial_path())
        .map_err(e)?;
    if let Some((start, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", start).map_err(e)?;
        fdt.property_u64("linux,initrd-end", start + size)
            .map_err(e)?;
    }
    fdt.end_node(chosen).map_err(e)?;

    let gic = fdt
        .begin_node(&format!("intc@{GIC_DIST_ADDR:x}"))
        .map_err(e)?;
    fdt.property_string("compatible", "arm,gic-v3").map_err(e)?;
    fdt.property_null("interrupt-controller").map_err(e)?;
    fdt.property_u32("#interrupt-cells", 3).map_err(e)?;
    fdt.property_array_u64(
        "reg",
        &[
            GIC_DIST_ADDR,
            GIC_DIST_SIZE,
            GIC_REDIST_ADDR,
            gic_redist_size(vcpus),
        ],
    )
    .map_err(e)?;
    fdt.property_u32("#redistributor-regions", 1).map_err(e)?;
    fdt.property_u32("#address-cells", 2).map_err(e)?;
    fdt.property_u32("#size-cells", 2).map_err(e)?;
    fdt.property_null("ranges").map_err(e)?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_LEVEL_HIGH],
    )
    .map_err(e)?;
    fdt.property_phandle(GIC_PHANDLE).map_err(e)?;
    fdt.end_node(gic).map_err(e)?;

    let timer = fdt.begin_node("timer").map_err(e)?;
    fdt.property_string("compatible", "arm,armv8-timer")
        .map_err(e)?;
    fdt.property_null("always-on").map_err(e)?;
    let mut cells = Vec::with_capacity(12);
    for ppi in TIMER_PPIS {
        cells.extend_from_slice(&[GIC_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    fdt.property_array_u32("interrupts", &cells).map_err(e)?;
    fdt.end_node(timer).map_err(e)?;

    let psci = fdt.begin_node("psci").map_err(e)?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".to_string(), "arm,psci-0.2".to_string()],
    )
    .map_err(e)?;
    fdt.property_string("method", "hvc").map_err(e)?;
    fdt.end_node(psci).map_err(e)?;

    let uart = fdt
        .begin_node(serial_path().trim_start_matches('/'))
        .map_err(e)?;
    fdt.property_string("compatible", "ns16550a").map_err(e)?;
    fdt.property_array_u64("reg", &reg(SERIAL_ADDR, SERIAL_SIZE))
        .map_err(e)?;
    fdt.property_u32("clock-frequency", SERIAL_CLOCK_HZ)
        .map_err(e)?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, SERIAL_SPI, IRQ_EDGE_RISING])
        .map_err(e)?;
    fdt.end_node(uart).map_err(e)?;

    for dev in cfg.virtio_mmio {
        let node = fdt
            .begin_node(&format!("virtio_mmio@{:x}", dev.addr))
            .map_err(e)?;
        fdt.property_string("compatible", "virtio,mmio")
            .map_err(e)?;
        fdt.property_array_u64("reg", &reg(dev.addr, dev.size))
            .map_err(e)?;
        fdt.property_array_u32("interrupts", &[GIC_SPI, dev.spi, IRQ_EDGE_RISING])
            .map_err(e)?;
        fdt.property_null("dma-coherent").map_err(e)?;
        fdt.end_node(node).map_err(e)?;
    }

    fdt.end_node(root).map_err(e)?;
    let blob = fdt.finish().map_err(e)?;
    if blob.len() > FDT_MAX_SIZE {
        return Err(Error::FdtTooLarge(blob.len()));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::layout::{vcpu_mpidr, virtio_mmio_device};
    use fdt::node::FdtNode;
    use fdt::Fdt;

    fn cells_u32(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn cells_u64(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn prop<'a>(node: FdtNode<'_, 'a>, name: &str) -> &'a [u8] {
        node.property(name)
            .unwrap_or_else(|| panic!("{} has no {name}", node.name))
            .value
    }
    fn string(node: FdtNode<'_, '_>, name: &str) -> String {
        let v = prop(node, name);
        String::from_utf8(v.strip_suffix(&[0]).unwrap().to_vec()).unwrap()
    }

    fn sample(vcpus: usize, initrd: Option<(u64, u64)>) -> Vec<u8> {
        let mpidrs: Vec<u64> = (0..vcpus).map(vcpu_mpidr).collect();
        let devices: Vec<MmioDevice> = (0..2).map(|i| virtio_mmio_device(i).unwrap()).collect();
        create(&FdtConfig {
            vcpu_mpidrs: &mpidrs,
            mem_size: 512 << 20,
            cmdline: "console=ttyS0 root=/dev/vda rw",
            initrd,
            virtio_mmio: &devices,
        })
        .unwrap()
    }

    #[test]
    fn tree_has_what_the_kernel_needs() {
        let blob = sample(18, Some((0x5f00_0000, 0x12_3456)));
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        assert_eq!(string(root, "compatible"), "linux,dummy-virt");
        assert_eq!(cells_u32(prop(root, "interrupt-parent")), vec![GIC_PHANDLE]);

        // CPUs: one per vCPU, reg = MPIDR affinity, started through PSCI.
        let cpus = fdt.find_node("/cpus").unwrap();
        let regs: Vec<u64> = cpus
            .children()
            .map(|cpu| {
                assert_eq!(string(cpu, "device_type"), "cpu");
                assert_eq!(string(cpu, "enable-method"), "psci");
                cells_u64(prop(cpu, "reg"))[0]
            })
            .collect();
        let want: Vec<u64> = (0..18).map(vcpu_mpidr).collect();
        assert_eq!(regs, want);
        assert!(regs.contains(&0x101), "vCPU 17 is Aff1=1, Aff0=1");

        let mem = fdt.find_node("/memory@40000000").unwrap();
        assert_eq!(string(mem, "device_type"), "memory");
        assert_eq!(cells_u64(prop(mem, "reg")), vec![DRAM_START, 512 << 20]);

        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(string(chosen, "bootargs"), "console=ttyS0 root=/dev/vda rw");
        assert_eq!(string(chosen, "stdout-path"), "/uart@9000000");
        assert_eq!(
            cells_u64(prop(chosen, "linux,initrd-start")),
            vec![0x5f00_0000]
        );
        assert_eq!(
            cells_u64(prop(chosen, "linux,initrd-end")),
            vec![0x5f00_0000 + 0x12_3456]
        );

        // GICv3: distributor and one redistributor frame pair per vCPU.
        let gic = fdt.find_phandle(GIC_PHANDLE).unwrap();
        assert_eq!(string(gic, "compatible"), "arm,gic-v3");
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(cells_u32(prop(gic, "#interrupt-cells")), vec![3]);
        assert_eq!(
            cells_u64(prop(gic, "reg")),
            vec![GIC_DIST_ADDR, GIC_DIST_SIZE, GIC_REDIST_ADDR, 18 * 0x2_0000]
        );

        let timer = fdt.find_compatible(&["arm,armv8-timer"]).unwrap();
        assert_eq!(
            cells_u32(prop(timer, "interrupts")),
            vec![1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );

        let psci = fdt.find_node("/psci").unwrap();
        let compat: Vec<&str> = psci.compatible().unwrap().all().collect();
        assert_eq!(compat, vec!["arm,psci-1.0", "arm,psci-0.2"]);
        assert_eq!(string(psci, "method"), "hvc");

        // The console the chosen node points to is the ns16550a.
        let uart = fdt.chosen().stdout().unwrap();
        assert_eq!(string(uart, "compatible"), "ns16550a");
        assert_eq!(cells_u64(prop(uart, "reg")), vec![SERIAL_ADDR, SERIAL_SIZE]);
        assert_eq!(cells_u32(prop(uart, "interrupts")), vec![0, SERIAL_SPI, 1]);
        assert_eq!(
            cells_u32(prop(uart, "clock-frequency")),
            vec![SERIAL_CLOCK_HZ]
        );

        let virtio: Vec<(Vec<u64>, Vec<u32>)> = fdt
            .all_nodes()
            .filter(|n| n.compatible().map(|c| c.first()) == Some("virtio,mmio"))
            .map(|n| (cells_u64(prop(n, "reg")), cells_u32(prop(n, "interrupts"))))
            .collect();
        assert_eq!(
            virtio,
            vec![
                (vec![0x0c00_0000, 0x1000], vec![0, 16, 1]),
                (vec![0x0c00_1000, 0x1000], vec![0, 17, 1]),
            ]
        );
    }

    #[test]
    fn no_initrd_no_initrd_properties() {
        let blob = sample(1, None);
        let fdt = Fdt::new(&blob).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,initrd-start").is_none());
        assert_eq!(fdt.cpus().count(), 1);
    }

    #[test]
    fn vcpu_count_is_bounded() {
        let cfg = |m: &'static [u64]| FdtConfig {
            vcpu_mpidrs: m,
            mem_size: 1 << 30,
            cmdline: "",
            initrd: None,
            virtio_mmio: &[],
        };
        assert!(matches!(create(&cfg(&[])), Err(Error::VcpuCount(0))));
        let many: &'static [u64] = Box::leak(vec![0u64; MAX_VCPUS + 1].into_boxed_slice());
        assert!(matches!(create(&cfg(many)), Err(Error::VcpuCount(_))));
        let all: Vec<u64> = (0..MAX_VCPUS).map(vcpu_mpidr).collect();
        let all: &'static [u64] = Box::leak(all.into_boxed_slice());
        assert!(create(&cfg(all)).unwrap().len() <= FDT_MAX_SIZE);
    }
}
