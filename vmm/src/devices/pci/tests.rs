//! Bus 0 through configuration mechanism #1 and the BAR window, as a
//! guest's enumeration drives them.

use super::*;
use proptest::prelude::*;

const WINDOW: u64 = 0xe000_0000;
const BAR_SIZE: u64 = 0x1000;

/// A function with a BAR whose bytes read as their offset and that
/// remembers the last write.
struct Probe {
    config: ConfigSpace,
    last: Option<(u64, Vec<u8>)>,
}

impl Probe {
    fn new(bar: u64) -> Probe {
        let mut config = ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: [0x01, 0x00, 0x00],
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.set_bar(bar, BAR_SIZE);
        config.add_capability(0x09, &[4, 1], &[]);
        config.add_capability(0x11, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[0, 0xc0]);
        Probe { config, last: None }
    }
}

impl PciFunction for Probe {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_bar(&mut self, offset: u64, data: &[u8]) {
        self.last = Some((offset, data.to_vec()));
    }
}

fn bus() -> (ConfigPorts, PciWindow, Arc<Mutex<Probe>>) {
    let probe = Arc::new(Mutex::new(Probe::new(WINDOW + 0x8000)));
    let mut bus = PciBus::new();
    assert_eq!(bus.add(probe.clone()).unwrap(), 1);
    (
        ConfigPorts::new(bus.clone()),
        PciWindow::new(bus, WINDOW),
        probe,
    )
}

fn address(slot: u32, function: u32, reg: u32) -> u32 {
    ADDRESS_ENABLE | slot << 11 | function << 8 | reg
}

fn cfg_read(p: &mut ConfigPorts, slot: u32, reg: u32, len: usize) -> u32 {
    p.write(0, &address(slot, 0, reg & !3).to_le_bytes());
    let mut d = [0u8; 4];
    p.read(4 + u64::from(reg & 3), &mut d[..len]);
    u32::from_le_bytes(d)
}

fn cfg_write32(p: &mut ConfigPorts, slot: u32, reg: u32, v: u32) {
    p.write(0, &address(slot, 0, reg).to_le_bytes());
    p.write(4, &v.to_le_bytes());
}

#[test]
fn enumeration_finds_the_host_bridge_and_the_device_and_nothing_else() {
    let (mut p, _, _) = bus();
    // CONFIG_ADDRESS reads back what was written (Linux's mechanism #1 probe).
    p.write(0, &0x8000_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    p.read(0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    // 00.0: the host bridge, class 06.00.
    assert_eq!(cfg_read(&mut p, 0, 0x0a, 2), 0x0600);
    // 01.0: the device.
    assert_eq!(cfg_read(&mut p, 1, 0, 4), 0x1042_1af4);
    assert_eq!(cfg_read(&mut p, 1, 0x08, 4), 0x0100_0001);
    // Empty slots, other functions and other buses read all ones.
    assert_eq!(cfg_read(&mut p, 2, 0, 4), u32::MAX);
    p.write(0, &address(1, 3, 0).to_le_bytes());
    p.read(4, &mut d);
    assert_eq!(d, [0xff; 4]);
    p.write(0, &(address(1, 0, 0) | 1 << 16).to_le_bytes());
    p.read(4, &mut d);
    assert_eq!(d, [0xff; 4]);
    // Without the enable bit: nothing either.
    p.write(0, &(address(1, 0, 0) & !ADDRESS_ENABLE).to_le_bytes());
    p.read(4, &mut d);
    assert_eq!(d, [0xff; 4]);
}

#[test]
fn the_capability_list_chains_from_0x34() {
    let (mut p, _, _) = bus();
    assert_ne!(cfg_read(&mut p, 1, 0x06, 2) as u16 & STATUS_CAP_LIST, 0);
    let first = cfg_read(&mut p, 1, 0x34, 1);
    assert_eq!(first, 0x40);
    assert_eq!(cfg_read(&mut p, 1, first, 1), 0x09);
    let second = cfg_read(&mut p, 1, first + 1, 1);
    assert_eq!(second % 4, 0);
    assert_eq!(cfg_read(&mut p, 1, second, 1), 0x11);
    assert_eq!(cfg_read(&mut p, 1, second + 1, 1), 0, "end of the list");
}

#[test]
fn bar_sizing_reads_the_size_and_a_moved_bar_is_decoded_where_it_went() {
    let (mut p, mut w, probe) = bus();
    let mut d = [0u8; 4];
    // Placed by the VMM, decoded.
    w.read(0x8010, &mut d);
    assert_eq!(d, [0x10; 4]);
    // Sizing, as Linux does it: decoding off, all ones, read, restore.
    let command = cfg_read(&mut p, 1, 0x04, 2);
    assert_ne!(command as u16 & COMMAND_MEMORY, 0);
    p.write(0, &address(1, 0, 0x04).to_le_bytes());
    p.write(4, &((command as u16) & !COMMAND_MEMORY).to_le_bytes());
    assert!(probe.lock().unwrap().config.bar().is_none());
    w.read(0x8010, &mut d);
    assert_eq!(d, [0xff; 4], "not decoded while memory space is off");
    cfg_write32(&mut p, 1, 0x10, u32::MAX);
    cfg_write32(&mut p, 1, 0x14, u32::MAX);
    assert_eq!(cfg_read(&mut p, 1, 0x10, 4), !(BAR_SIZE as u32 - 1) | 0b100);
    assert_eq!(cfg_read(&mut p, 1, 0x14, 4), u32::MAX);
    // The guest moves it.
    cfg_write32(&mut p, 1, 0x10, (WINDOW + 0x3000) as u32);
    cfg_write32(&mut p, 1, 0x14, 0);
    p.write(0, &address(1, 0, 0x04).to_le_bytes());
    p.write(4, &(command as u16).to_le_bytes());
    assert_eq!(
        probe.lock().unwrap().config.bar(),
        Some((WINDOW + 0x3000, BAR_SIZE))
    );
    w.write(0x3008, &[1, 2]);
    assert_eq!(probe.lock().unwrap().last, Some((8, vec![1, 2])));
    w.read(0x8010, &mut d);
    assert_eq!(d, [0xff; 4], "the old place is empty");
    // An access straddling the BAR's end reaches nobody.
    w.read(0x3ffe, &mut d);
    assert_eq!(d, [0xff; 4]);
}

#[test]
fn read_only_fields_ignore_writes() {
    let (mut p, _, _) = bus();
    cfg_write32(&mut p, 1, 0x00, 0);
    cfg_write32(&mut p, 1, 0x08, 0);
    cfg_write32(&mut p, 1, 0x34, 0);
    assert_eq!(cfg_read(&mut p, 1, 0, 4), 0x1042_1af4);
    assert_eq!(cfg_read(&mut p, 1, 0x08, 4), 0x0100_0001);
    assert_eq!(cfg_read(&mut p, 1, 0x34, 1), 0x40);
    // The interrupt line is the OS's scratch byte.
    cfg_write32(&mut p, 1, 0x3c, 0xffff_ff0b);
    assert_eq!(cfg_read(&mut p, 1, 0x3c, 4), 0x0b);
}

proptest! {
    /// Any port traffic: no panic, the device's identity intact.
    #[test]
    fn random_port_traffic_is_survived(
        ops in proptest::collection::vec(
            (0u64..8, any::<u32>(), 1usize..5, any::<bool>()), 1..200)
    ) {
        let (mut p, mut w, _) = bus();
        for (port, v, len, write) in ops {
            let bytes = v.to_le_bytes();
            if write {
                p.write(port, &bytes[..len]);
            } else {
                let mut d = vec![0u8; len];
                p.read(port, &mut d);
            }
            let mut d = [0u8; 4];
            w.read(u64::from(v), &mut d);
        }
        prop_assert_eq!(cfg_read(&mut p, 1, 0, 4), 0x1042_1af4);
    }
}
