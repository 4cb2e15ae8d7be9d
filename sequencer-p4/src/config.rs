//! The ring configuration as the control plane stores it and brokers fetch it.
//!
//! Controllers serve the current one as JSON at `GET /ring` on their admin port; a broker
//! fetches it at start and whenever a switch answers WrongEpoch, Sealed or NotInstalled.

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use crate::wire::Status;

/// One switch of a ring, in ring order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    pub switch_id: u16,
    /// UDP address of the switch's data plane.
    pub addr: SocketAddrV4,
    /// Boot id of the incarnation the epoch was installed on.
    pub boot: u64,
}

/// An installed epoch: what every member was told by `Install`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingConfig {
    pub epoch: u32,
    /// First number of the epoch.
    pub base: u64,
    /// The epoch never issues a number at or above this.
    pub limit: u64,
    /// Most numbers one token visit may cover (W); a request must not ask for more.
    pub max_visit: u32,
    /// Members in ring order.
    pub members: Vec<RingMember>,
    /// `switch_id` of the member that creates the token on `Inject`.
    pub head: u16,
}

impl RingConfig {
    /// The member a broker sends its requests to: spread brokers over the ring by id.
    pub fn home(&self, broker_id: u64) -> Option<&RingMember> {
        let n = self.members.len() as u64;
        (n > 0).then(|| &self.members[(broker_id % n) as usize])
    }
}

/// The restart point (PROTOCOL.md, "Choosing the restart point"): the base of the epoch after
/// `epoch`, above every number `epoch` can have issued. `members` yields, for each member of
/// `epoch` in ring order, the boot id it was installed on and the Status that answered the
/// seal, if any. A member counts as reporting only if that Status acknowledges the seal
/// (`seal_floor >= epoch`) and comes from the installed incarnation (same boot); a
/// restarted member lost its state and is as silent as a dead one.
///
/// With B the largest `fwd_base` of reporting members installed in `epoch` (or `base`), S
/// the number of silent members and W = `max_visit`: `R = min(limit, B + S×W)` if at least
/// one member reported, else `R = limit`. Each silent member can have made at most one visit
/// (≤ W numbers) after the last visit at a reporting switch, because the next reporting
/// switch swallowed the token once sealed. The simulation and the ring controller both call
/// this one function, so the simulation checks the formula the controller runs.
pub fn restart_point<'a>(
    epoch: u32,
    base: u64,
    limit: u64,
    max_visit: u32,
    members: impl IntoIterator<Item = (u64, Option<&'a Status>)>,
) -> u64 {
    let mut highest = base;
    let (mut total, mut reporting) = (0u64, 0u64);
    for (boot, report) in members {
        total += 1;
        let Some(st) = report.filter(|st| st.boot == boot && st.seal_floor >= epoch) else {
            continue;
        };
        reporting += 1;
        if st.epoch == epoch {
            highest = highest.max(st.fwd_base);
        }
    }
    if total == 0 {
        return base;
    }
    if reporting == 0 {
        return limit;
    }
    highest
        .saturating_add((total - reporting).saturating_mul(u64::from(max_visit)))
        .min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_home() {
        let cfg = RingConfig {
            epoch: 3,
            base: 1 << 40,
            limit: 2 << 40,
            max_visit: 1 << 16,
            members: (0..3)
                .map(|i| RingMember {
                    switch_id: i,
                    addr: SocketAddrV4::new([127, 0, 0, 1].into(), 7650 + i),
                    boot: 42 + u64::from(i),
                })
                .collect(),
            head: 0,
        };
        let json = serde_json::to_string(&cfg).expect("encode");
        assert_eq!(
            serde_json::from_str::<RingConfig>(&json).expect("decode"),
            cfg
        );
        assert_eq!(cfg.home(4).map(|m| m.switch_id), Some(1));
    }
}
