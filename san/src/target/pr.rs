//! Persistent reservation state of one LU (SPC-3 §5.6, SPC-4 §5.12): the
//! registrations, one per I_T nexus (or per initiator port on every target
//! port with ALL_TG_PT), the reservation and its holder, the generation
//! counter, which commands a nexus may run, and what each PR OUT service
//! action does, with the unit attentions and aborts it causes.
//!
//! Pure state, no I/O: the caller holds the LU exclusively while it runs
//! PR OUT, and applies the returned [`Effects`].

use super::nexus::{InitiatorPort, Nexus};
use crate::scsi::{
    Capabilities, FullStatus, FullStatusDescriptor, PrOutAction, PrOutParams, PrType, ReadKeys,
    ReadReservation, Reservation, Sense, TransportId,
};

/// 05/26/04: INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: Sense = Sense::new(crate::scsi::sense::ILLEGAL_REQUEST, 0x26, 0x04);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Registration {
    port: InitiatorPort,
    /// The target port group, or `None` for an ALL_TG_PT registration.
    tpgt: Option<u16>,
    key: u64,
}

impl Registration {
    fn covers(&self, n: &Nexus) -> bool {
        self.port == n.port && self.tpgt.is_none_or(|t| t == n.tpgt)
    }

    fn nexuses(&self, tpgts: &[u16]) -> Vec<Nexus> {
        let one = |tpgt| Nexus {
            port: self.port.clone(),
            tpgt,
        };
        match self.tpgt {
            Some(t) => vec![one(t)],
            None => tpgts.iter().map(|&t| one(t)).collect(),
        }
    }

    fn same(&self, other: &Registration) -> bool {
        self.port == other.port && self.tpgt == other.tpgt
    }
}

#[derive(Clone, Debug)]
struct Held {
    /// The registration that reserved (for all-registrants types, every
    /// registration holds the reservation).
    holder: Registration,
    pr_type: PrType,
}

fn all_registrants(t: PrType) -> bool {
    matches!(
        t,
        PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
    )
}

fn registrants_only(t: PrType) -> bool {
    matches!(
        t,
        PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
    )
}

/// How a command touches the medium, for the conflict rules (SPC-4 tables
/// 63-64, SBC-3 table 13). Commands in neither class are always allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Why a PR OUT failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PrError {
    Conflict,
    Check(Sense),
}

/// What a successful PR OUT asks of the other nexuses.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    pub unit_attentions: Vec<(Nexus, Sense)>,
    /// Nexuses whose tasks PREEMPT AND ABORT aborts.
    pub aborted: Vec<Nexus>,
}

#[derive(Default)]
pub(crate) struct PrState {
    generation: u32,
    regs: Vec<Registration>,
    res: Option<Held>,
}

impl PrState {
    fn reg_of(&self, n: &Nexus) -> Option<usize> {
        self.regs.iter().position(|r| r.covers(n))
    }

    fn holds(&self, r: &Registration) -> bool {
        match &self.res {
            Some(h) => all_registrants(h.pr_type) || h.holder.same(r),
            None => false,
        }
    }

    /// Whether `n` may run a command of class `a` under the reservation.
    pub fn allows(&self, n: &Nexus, a: Access) -> bool {
        let Some(res) = &self.res else {
            return true;
        };
        let reg = self.reg_of(n).map(|i| &self.regs[i]);
        if reg.is_some_and(|r| self.holds(r)) {
            return true;
        }
        match (res.pr_type, a) {
            (PrType::WriteExclusive, Access::Read) => true,
            (PrType::WriteExclusive | PrType::ExclusiveAccess, _) => false,
            (
                PrType::WriteExclusiveRegistrantsOnly | PrType::WriteExclusiveAllRegistrants,
                Access::Read,
            ) => true,
            _ => reg.is_some(),
        }
    }

    /// Every nexus of every registration but `except`'s.
    fn others(&self, except: &Nexus, tpgts: &[u16]) -> Vec<Nexus> {
        self.regs
            .iter()
            .flat_map(|r| r.nexuses(tpgts))
            .filter(|x| x != except)
            .collect()
    }

    fn ua_all(&self, except: &Nexus, tpgts: &[u16], s: Sense, fx: &mut Effects) {
        fx.unit_attentions
            .extend(self.others(except, tpgts).into_iter().map(|n| (n, s)));
    }

    /// Runs one PR OUT service action for `n`. `tpgts` are the target's port groups.
    pub fn out(
        &mut self,
        n: &Nexus,
        action: PrOutAction,
        pr_type: Option<PrType>,
        p: &PrOutParams,
        tpgts: &[u16],
    ) -> Result<Effects, PrError> {
        let bad_param = PrError::Check(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
        // Neither SPEC_I_PT nor APTPL is supported (REPORT CAPABILITIES says so).
        if p.spec_i_pt {
            return Err(bad_param);
        }
        let mut fx = Effects::default();
        let me = self.reg_of(n);
        match action {
            PrOutAction::Register | PrOutAction::RegisterAndIgnoreExistingKey => {
                if p.aptpl {
                    return Err(bad_param);
                }
                let ignore = action == PrOutAction::RegisterAndIgnoreExistingKey;
                match me {
                    None => {
                        if !ignore && p.key != 0 {
                            return Err(PrError::Conflict);
                        }
                        if p.sa_key == 0 {
                            return Ok(fx);
                        }
                        let tpgt = if p.all_tg_pt {
                            // One registration for the port replaces per-port ones.
                            self.regs.retain(|r| r.port != n.port);
                            None
                        } else {
                            Some(n.tpgt)
                        };
                        self.regs.push(Registration {
                            port: n.port.clone(),
                            tpgt,
                            key: p.sa_key,
                        });
                    }
                    Some(i) => {
                        if !ignore && p.key != self.regs[i].key {
                            return Err(PrError::Conflict);
                        }
                        if p.sa_key == 0 {
                            self.unregister(i, n, tpgts, &mut fx);
                        } else {
                            self.regs[i].key = p.sa_key;
                        }
                    }
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(fx)
            }
            PrOutAction::RegisterAndMove => Err(PrError::Check(Sense::INVALID_FIELD_IN_CDB)),
            _ => {
                let Some(i) = me else {
                    return Err(PrError::Conflict);
                };
                if self.regs[i].key != p.key {
                    return Err(PrError::Conflict);
                }
                let mine = self.regs[i].clone();
                match action {
                    PrOutAction::Reserve => {
                        let Some(t) = pr_type else {
                            return Err(PrError::Check(Sense::INVALID_FIELD_IN_CDB));
                        };
                        match &self.res {
                            Some(h) if self.holds(&mine) && h.pr_type == t => {}
                            Some(_) => return Err(PrError::Conflict),
                            None => {
                                self.res = Some(Held {
                                    holder: mine,
                                    pr_type: t,
                                })
                            }
                        }
                    }
                    PrOutAction::Release => {
                        let Some(h) = self.res.clone() else {
                            return Ok(fx);
                        };
                        if !self.holds(&mine) {
                            return Ok(fx);
                        }
                        if pr_type != Some(h.pr_type) {
                            return Err(PrError::Check(INVALID_RELEASE));
                        }
                        self.res = None;
                        if registrants_only(h.pr_type) || all_registrants(h.pr_type) {
                            self.ua_all(n, tpgts, Sense::RESERVATIONS_RELEASED, &mut fx);
                        }
                    }
                    PrOutAction::Clear => {
                        self.ua_all(n, tpgts, Sense::RESERVATIONS_PREEMPTED, &mut fx);
                        self.regs.clear();
                        self.res = None;
                        self.generation = self.generation.wrapping_add(1);
                    }
                    _ => {
                        let abort = action == PrOutAction::PreemptAndAbort;
                        self.preempt(n, &mine, pr_type, p.sa_key, abort, tpgts, &mut fx)?;
                        self.generation = self.generation.wrapping_add(1);
                    }
                }
                Ok(fx)
            }
        }
    }

    /// Removes registration `i` (of `n`); a holder leaving releases a
    /// reservation that is not all-registrants (SPC-4 §5.12.11.2.2).
    fn unregister(&mut self, i: usize, n: &Nexus, tpgts: &[u16], fx: &mut Effects) {
        let gone = self.regs.remove(i);
        let Some(h) = &self.res else {
            return;
        };
        let release = if all_registrants(h.pr_type) {
            self.regs.is_empty()
        } else {
            h.holder.same(&gone)
        };
        if release {
            let t = h.pr_type;
            self.res = None;
            if registrants_only(t) {
                self.ua_all(n, tpgts, Sense::RESERVATIONS_RELEASED, fx);
            }
        }
    }

    /// Removes the registrations with `key`, other than `mine`.
    fn remove_key(&mut self, key: u64, mine: &Registration) -> Vec<Registration> {
        let (gone, kept) = std::mem::take(&mut self.regs)
            .into_iter()
            .partition(|r| r.key == key && !r.same(mine));
        self.regs = kept;
        gone
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.12.11.4).
    #[allow(clippy::too_many_arguments, reason = "one service action's inputs")]
    fn preempt(
        &mut self,
        n: &Nexus,
        mine: &Registration,
        pr_type: Option<PrType>,
        sa_key: u64,
        abort: bool,
        tpgts: &[u16],
        fx: &mut Effects,
    ) -> Result<(), PrError> {
        let bad_param = PrError::Check(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
        let need_type = || pr_type.ok_or(PrError::Check(Sense::INVALID_FIELD_IN_CDB));
        // Whether the action needs some registration with SA key to exist.
        let (removed, must_match) = match self.res.clone() {
            None => {
                if sa_key == 0 {
                    return Err(bad_param);
                }
                (self.remove_key(sa_key, mine), true)
            }
            Some(h) if all_registrants(h.pr_type) && sa_key == 0 => {
                let t = need_type()?;
                let (gone, kept) = std::mem::take(&mut self.regs)
                    .into_iter()
                    .partition(|r| !r.same(mine));
                self.regs = kept;
                self.res = Some(Held {
                    holder: mine.clone(),
                    pr_type: t,
                });
                (gone, false)
            }
            Some(h) if !all_registrants(h.pr_type) && sa_key == 0 => return Err(bad_param),
            Some(h) if !all_registrants(h.pr_type) && sa_key == h.holder.key => {
                let t = need_type()?;
                let gone = self.remove_key(sa_key, mine);
                self.res = Some(Held {
                    holder: mine.clone(),
                    pr_type: t,
                });
                if t != h.pr_type {
                    self.ua_all(n, tpgts, Sense::RESERVATIONS_RELEASED, fx);
                }
                (gone, false)
            }
            Some(_) => (self.remove_key(sa_key, mine), true),
        };
        if removed.is_empty() && must_match {
            return Err(PrError::Conflict);
        }
        for r in &removed {
            for x in r.nexuses(tpgts) {
                if &x != n {
                    if abort {
                        fx.aborted.push(x.clone());
                    }
                    fx.unit_attentions.push((x, Sense::REGISTRATIONS_PREEMPTED));
                }
            }
        }
        Ok(())
    }

    pub fn read_keys(&self) -> ReadKeys {
        ReadKeys {
            generation: self.generation,
            keys: self.regs.iter().map(|r| r.key).collect(),
        }
    }

    pub fn read_reservation(&self) -> ReadReservation {
        ReadReservation {
            generation: self.generation,
            reservation: self.res.as_ref().map(|h| Reservation {
                key: if all_registrants(h.pr_type) {
                    0
                } else {
                    h.holder.key
                },
                pr_type: h.pr_type,
            }),
        }
    }

    /// READ FULL STATUS: every registration with its initiator port.
    pub fn full_status(&self) -> FullStatus {
        FullStatus {
            generation: self.generation,
            descriptors: self
                .regs
                .iter()
                .map(|r| FullStatusDescriptor {
                    key: r.key,
                    all_tg_pt: r.tpgt.is_none(),
                    holder: self
                        .res
                        .as_ref()
                        .filter(|_| self.holds(r))
                        .map(|h| h.pr_type),
                    // Each portal group has one port, numbered like its tag.
                    relative_port: r.tpgt.unwrap_or(0),
                    transport_id: TransportId::IscsiPort {
                        name: r.port.name.clone(),
                        isid: r.port.isid,
                    },
                })
                .collect(),
        }
    }

    /// What this implementation supports: ALL_TG_PT, all six types, no
    /// SPEC_I_PT and no persistence over power loss.
    pub fn capabilities() -> Capabilities {
        Capabilities {
            crh: false,
            sip_c: false,
            atp_c: true,
            ptpl_c: false,
            allow_commands: 0,
            ptpl_a: false,
            types: Some(PrType::ALL.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(name: &str, tpgt: u16) -> Nexus {
        Nexus {
            port: InitiatorPort {
                name: name.into(),
                isid: [0x80, 0, 0, 0, 0, 1],
            },
            tpgt,
        }
    }

    fn params(key: u64, sa_key: u64) -> PrOutParams {
        PrOutParams {
            key,
            sa_key,
            ..PrOutParams::default()
        }
    }

    /// SPC-4 table 63/64: who may read and write under each type, for the
    /// holder, another registrant and a stranger.
    #[test]
    fn conflict_rules_of_every_type() {
        let (h, r, x) = (nexus("h", 1), nexus("r", 1), nexus("x", 1));
        use Access::{Read, Write};
        // (type, registrant read/write, stranger read/write)
        let table = [
            (PrType::WriteExclusive, [true, false], [true, false]),
            (PrType::ExclusiveAccess, [false, false], [false, false]),
            (
                PrType::WriteExclusiveRegistrantsOnly,
                [true, true],
                [true, false],
            ),
            (
                PrType::ExclusiveAccessRegistrantsOnly,
                [true, true],
                [false, false],
            ),
            (
                PrType::WriteExclusiveAllRegistrants,
                [true, true],
                [true, false],
            ),
            (
                PrType::ExclusiveAccessAllRegistrants,
                [true, true],
                [false, false],
            ),
        ];
        for (t, reg, other) in table {
            let mut pr = PrState::default();
            let tp = [1];
            pr.out(&h, PrOutAction::Register, None, &params(0, 1), &tp)
                .unwrap();
            pr.out(&r, PrOutAction::Register, None, &params(0, 2), &tp)
                .unwrap();
            pr.out(&h, PrOutAction::Reserve, Some(t), &params(1, 0), &tp)
                .unwrap();
            assert!(pr.allows(&h, Read) && pr.allows(&h, Write), "{t:?} holder");
            assert_eq!(
                [pr.allows(&r, Read), pr.allows(&r, Write)],
                reg,
                "{t:?} registrant"
            );
            assert_eq!(
                [pr.allows(&x, Read), pr.allows(&x, Write)],
                other,
                "{t:?} stranger"
            );
        }
    }

    #[test]
    fn preempt_rules() {
        let (a, b) = (nexus("a", 1), nexus("b", 1));
        let tp = [1];
        let mut pr = PrState::default();
        let wero = Some(PrType::WriteExclusiveRegistrantsOnly);
        pr.out(&a, PrOutAction::Register, None, &params(0, 1), &tp)
            .unwrap();
        pr.out(&b, PrOutAction::Register, None, &params(0, 2), &tp)
            .unwrap();
        pr.out(&a, PrOutAction::Reserve, wero, &params(1, 0), &tp)
            .unwrap();
        // A key nobody has: conflict; SA key 0 under a holder: bad parameter.
        let none = pr.out(&b, PrOutAction::Preempt, wero, &params(2, 9), &tp);
        assert_eq!(none, Err(PrError::Conflict));
        let zero = pr.out(&b, PrOutAction::Preempt, wero, &params(2, 0), &tp);
        assert_eq!(
            zero,
            Err(PrError::Check(Sense::INVALID_FIELD_IN_PARAMETER_LIST))
        );
        // Wrong own key: conflict, nothing changes.
        let wrong = pr.out(&b, PrOutAction::PreemptAndAbort, wero, &params(7, 1), &tp);
        assert_eq!(wrong, Err(PrError::Conflict));
        let fx = pr
            .out(&b, PrOutAction::PreemptAndAbort, wero, &params(2, 1), &tp)
            .unwrap();
        assert_eq!(fx.aborted, vec![a.clone()]);
        assert_eq!(
            fx.unit_attentions,
            vec![(a.clone(), Sense::REGISTRATIONS_PREEMPTED)]
        );
        assert_eq!(pr.read_keys().keys, vec![2]);
        assert_eq!(pr.read_reservation().reservation.map(|r| r.key), Some(2));
        // A released RO reservation tells the other registrants.
        pr.out(&a, PrOutAction::Register, None, &params(0, 1), &tp)
            .unwrap();
        let fx = pr
            .out(&b, PrOutAction::Release, wero, &params(2, 0), &tp)
            .unwrap();
        assert_eq!(fx.unit_attentions, vec![(a, Sense::RESERVATIONS_RELEASED)]);
        assert_eq!(pr.read_keys().generation, 4);
    }
}
