//! `ssv-vmm`: runs one VM under KVM with virtio-blk disks on thin volumes.
//!
//! ```text
//! ssv-vmm --memory MiB --vcpus N (--realmode IMAGE | --kernel K [--initrd I] [--cmdline C])
//!         --disk SPEC... --serial PATH|stdout
//! ```
//! A disk SPEC is `dir=DIR,top=NAME[,readonly]` or
//! `vg=VG,lv=TOP,pv=PATH[,pv=PATH...][,readonly]`, with `threshold=PCT` and
//! `chunk=SIZE` to set the growth policy and `queues=N` (default: one per
//! vCPU). The exit status is the code the
//! guest wrote to the exit port, 0 when it shut down, 1 on a VMM error.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vmm::arch::x86_64::{acpi_pm, layout, linux, machine, realmode, regs};
use vmm::config::{Boot, DiskSpec, DiskStore, SerialOutput, VmConfig, MIB};
use vmm::devices::exit_port::{ExitPort, EXIT_PORT};
use vmm::devices::serial::{Serial, COM1_BASE, COM1_IRQ, COM1_LEN};
use vmm::devices::virtio::block::{Block, BlockOptions, Fence, ThinDisk};
use vmm::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY, WINDOW_SIZE};
use vmm::vm::{Vm, VmExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Parser)]
#[command(about = "Runs one VM under KVM on thin disks")]
struct Args {
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// A flat 16-bit image started at 0:0x7c00.
    #[arg(long, conflicts_with = "kernel", required_unless_present = "kernel")]
    realmode: Option<PathBuf>,
    /// A Linux kernel (bzImage or ELF vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    #[arg(
        long,
        requires = "kernel",
        default_value = "console=ttyS0 reboot=t panic=1"
    )]
    cmdline: String,
    /// A virtio-blk disk (repeatable).
    #[arg(long)]
    disk: Vec<DiskSpec>,
    /// Where the serial console goes: a file, or stdout.
    #[arg(long, default_value = "stdout")]
    serial: SerialOutput,
}

impl Args {
    fn config(self) -> VmConfig {
        let (boot, virtio_mmio_base) = match (self.realmode, self.kernel) {
            (Some(image), _) => (Boot::RealMode { image }, realmode::VIRTIO_MMIO_BASE),
            (None, kernel) => (
                Boot::Linux {
                    kernel: kernel.unwrap_or_default(),
                    initrd: self.initrd,
                    cmdline: self.cmdline,
                },
                layout::VIRTIO_MMIO_BASE,
            ),
        };
        VmConfig {
            memory_mib: self.memory,
            vcpus: self.vcpus,
            boot,
            disks: self.disk,
            serial: self.serial,
            virtio_mmio_base,
        }
    }
}

/// A disk as opened: its volume (flushed at exit) and its device.
struct OpenDisk {
    volume: Arc<thin::Volume>,
    block: Block,
}

fn open_disk(spec: &DiskSpec, vcpus: u8) -> Result<OpenDisk> {
    let store: Arc<dyn thin::LvStore> = match &spec.store {
        DiskStore::Dir(dir) => Arc::new(thin::DirStore::new(dir, 4 * MIB)),
        DiskStore::Vg { vg, pvs } => {
            let devs = pvs
                .iter()
                .map(|p| {
                    let opts = san::OpenOptions::new().read_only(spec.readonly);
                    let dev = san::FileDev::open(p, &opts)
                        .with_context(|| format!("opening PV {}", p.display()))?;
                    Ok(lvm::PvDev::new(Arc::new(dev), p.display().to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(thin::VgStore::open(&devs, vg).with_context(|| format!("opening VG {vg}"))?)
        }
    };
    let mut opts = if spec.readonly {
        thin::OpenOptions::read_only()
    } else {
        thin::OpenOptions::default().with_extender(Arc::new(thin::StoreExtender(store.clone())))
    };
    if let Some(p) = spec.threshold_percent {
        opts.policy.threshold_percent = p;
    }
    if let Some(c) = spec.chunk {
        opts.policy.chunk = c;
    }
    let volume = Arc::new(
        thin::Volume::open(&*store, &spec.top, &opts)
            .with_context(|| format!("opening volume {}", spec.top))?,
    );
    let disk = Arc::new(ThinDisk::new(volume.clone(), spec.readonly));
    let fence = Fence::new().context("creating the disk's fence")?;
    let mut block_opts = BlockOptions::new(&spec.top);
    block_opts.num_queues = spec
        .queues
        .unwrap_or(u16::from(vcpus.max(1)).min(vmm::devices::virtio::block::MAX_QUEUES));
    let block = Block::new(disk, block_opts, fence)?;
    Ok(OpenDisk { volume, block })
}

fn irqfd(vm: &Vm, gsi: u32) -> Result<EventFd> {
    let fd = EventFd::new(EFD_NONBLOCK).context("creating an irqfd")?;
    vm.fd()
        .register_irqfd(&fd, gsi)
        .with_context(|| format!("registering the irqfd of GSI {gsi}"))?;
    Ok(fd)
}

fn run(cfg: VmConfig) -> Result<VmExit> {
    let bytes = cfg
        .memory_mib
        .checked_mul(MIB)
        .ok_or_else(|| anyhow!("--memory {} MiB is too large", cfg.memory_mib))?;
    let ranges = match cfg.boot {
        Boot::RealMode { .. } => realmode::ram_ranges(bytes),
        Boot::Linux { .. } => layout::ram_ranges(bytes),
    };
    let mut vm = Vm::new(&ranges)?;
    machine::setup_vm(vm.fd()).context("setting up the irqchip")?;

    let out: Box<dyn std::io::Write + Send> = match &cfg.serial {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
    };
    let serial = Serial::new(out, Some(irqfd(&vm, COM1_IRQ)?));
    vm.pio_bus()
        .insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))?;
    let exit = ExitPort::new(vm.control().clone());
    vm.pio_bus()
        .insert(EXIT_PORT, 1, Arc::new(Mutex::new(exit)))?;
    // ACPI power-off: what a Linux guest's `poweroff` writes.
    let sleep = acpi_pm::SleepRegisters::new(vm.control().clone());
    vm.pio_bus().insert(
        u64::from(acpi_pm::SLEEP_CONTROL_PORT),
        acpi_pm::PORTS,
        Arc::new(Mutex::new(sleep)),
    )?;

    let mut volumes = Vec::new();
    let mut windows = Vec::new();
    for (i, spec) in cfg.disks.iter().enumerate() {
        let disk = open_disk(spec, cfg.vcpus)?;
        let addr = cfg.virtio_mmio_base + i as u64 * WINDOW_SIZE;
        let gsi = layout::VIRTIO_MMIO_FIRST_GSI + i as u32;
        if gsi >= layout::IOAPIC_PINS {
            bail!(
                "too many disks: {} at most",
                layout::VIRTIO_MMIO_MAX_DEVICES
            );
        }
        let transport = MmioTransport::new(
            Box::new(disk.block),
            vm.memory().clone(),
            Some(irqfd(&vm, gsi)?),
        )?;
        for (q, fd) in transport.notify_fds().iter().enumerate() {
            vm.fd()
                .register_ioevent(
                    fd,
                    &kvm_ioctls::IoEventAddress::Mmio(addr + QUEUE_NOTIFY),
                    q as u32,
                )
                .context("registering a queue's ioeventfd")?;
        }
        vm.mmio_bus()
            .insert(addr, WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
        windows.push(layout::MmioDevice {
            addr,
            size: WINDOW_SIZE,
            gsi,
        });
        volumes.push(disk.volume);
    }

    let vcpus = cfg.vcpus;
    let mut running = match &cfg.boot {
        Boot::RealMode { image } => {
            let bytes =
                std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
            realmode::load(vm.memory(), &bytes)?;
            if vcpus != 1 {
                bail!("a real-mode guest runs on one vCPU");
            }
            vm.start(1, &|_, fd, _| {
                realmode::setup_vcpu(fd).map_err(|e| e.to_string())
            })?
        }
        Boot::Linux {
            kernel,
            initrd,
            cmdline,
        } => {
            let open = |p: &PathBuf| {
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))
            };
            let mut k = open(kernel)?;
            let mut i = initrd.as_ref().map(open).transpose()?;
            let mut line = linux_loader::cmdline::Cmdline::new(layout::CMDLINE_MAX_SIZE)
                .map_err(|e| anyhow!("command line: {e}"))?;
            line.insert_str(cmdline)
                .map_err(|e| anyhow!("command line: {e}"))?;
            let m = linux::Machine {
                vcpus: usize::from(vcpus),
                virtio_mmio: &windows,
            };
            let boot = linux::load(vm.memory(), &mut k, i.as_mut(), &line, &m)?;
            let supported = vm
                .kvm()
                .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .context("reading KVM's CPUID")?;
            vm.start(vcpus, &|_, fd, id| {
                regs::setup_vcpu(fd, &boot, &supported, usize::from(id), usize::from(vcpus))
                    .map_err(|e| e.to_string())
            })?
        }
    };
    let why = running.wait();
    running.stop();
    drop(running);
    for v in &volumes {
        v.flush().context("flushing a disk at exit")?;
    }
    Ok(why)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cfg = Args::parse().config();
    match run(cfg) {
        Ok(VmExit::Guest(code)) => std::process::exit(i32::from(code)),
        Ok(VmExit::Shutdown | VmExit::Stopped) => std::process::exit(0),
        Ok(why) => {
            eprintln!("ssv-vmm: the VM stopped: {why:?}");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("ssv-vmm: {e:#}");
            std::process::exit(1)
        }
    }
}
