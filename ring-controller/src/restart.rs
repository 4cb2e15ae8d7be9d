//! The restart point (PROTOCOL.md, "Choosing the restart point"): the base of epoch e+1,
//! above every number epoch e can have issued, computed from the sealed switches' reports.

use std::collections::BTreeMap;

use sequencer_p4::config::RingConfig;
use sequencer_p4::wire::Status;

/// `reports` maps switch id to the Status that answered the seal of `cfg.epoch`; the formula
/// and why it is safe are in [`sequencer_p4::config::restart_point`], shared with the
/// simulation.
pub fn restart_point(cfg: &RingConfig, reports: &BTreeMap<u16, Status>) -> u64 {
    let members = cfg
        .members
        .iter()
        .map(|m| (m.boot, reports.get(&m.switch_id)));
    sequencer_p4::config::restart_point(cfg.epoch, cfg.base, cfg.limit, cfg.max_visit, members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sequencer_p4::config::RingMember;
    use std::net::SocketAddrV4;

    fn cfg(n: u16) -> RingConfig {
        RingConfig {
            epoch: 5,
            base: 1000,
            limit: 1_000_000,
            max_visit: 100,
            members: (0..n)
                .map(|i| RingMember {
                    switch_id: i,
                    addr: SocketAddrV4::new([127, 0, 0, 1].into(), 7650 + i),
                    boot: 10 + u64::from(i),
                })
                .collect(),
            head: 0,
        }
    }

    fn report(id: u16, boot: u64, epoch: u32, floor: u32, fwd_base: u64) -> (u16, Status) {
        (
            id,
            Status {
                switch_id: id,
                epoch,
                seal_floor: floor,
                boot,
                fwd_base,
                ..Status::default()
            },
        )
    }

    #[test]
    fn all_report_takes_highest_fwd_base() {
        let r: BTreeMap<_, _> = [
            report(0, 10, 5, 5, 1500),
            report(1, 11, 5, 5, 1700),
            report(2, 12, 5, 5, 1600),
        ]
        .into();
        assert_eq!(restart_point(&cfg(3), &r), 1700);
    }

    #[test]
    fn silent_and_restarted_members_add_w_each() {
        // Switch 1 silent, switch 2 restarted (boot 99): both may hold one visit each.
        let r: BTreeMap<_, _> = [report(0, 10, 5, 5, 1500), report(2, 99, 0, 5, 0)].into();
        assert_eq!(restart_point(&cfg(3), &r), 1500 + 2 * 100);
    }

    #[test]
    fn nobody_reports_means_limit_and_never_above_limit() {
        assert_eq!(restart_point(&cfg(3), &BTreeMap::new()), 1_000_000);
        let r: BTreeMap<_, _> = [report(0, 10, 5, 5, 999_950)].into();
        assert_eq!(restart_point(&cfg(3), &r), 1_000_000);
    }

    #[test]
    fn reporter_not_installed_in_epoch_counts_but_adds_nothing() {
        // Installed in 4 only (epoch 5's install never reached it), sealed at 5.
        let r: BTreeMap<_, _> = [report(0, 10, 4, 5, 888_888), report(1, 11, 5, 5, 1200)].into();
        assert_eq!(restart_point(&cfg(2), &r), 1200);
    }

    #[test]
    fn unsealed_report_is_not_a_report() {
        let r: BTreeMap<_, _> = [report(0, 10, 5, 4, 5000), report(1, 11, 5, 5, 1200)].into();
        assert_eq!(restart_point(&cfg(2), &r), 1200 + 100);
    }

    #[test]
    fn empty_ring_restarts_at_base() {
        assert_eq!(restart_point(&cfg(0), &BTreeMap::new()), 1000);
    }

    #[test]
    fn agrees_with_the_simulation_model() {
        // Both call the shared formula; this checks that the controller's adapter (switch ids,
        // boot ids from the config) feeds it what the sim's adapter does (switch indexes).
        let c = cfg(3);
        let store = sequencer_p4::sim::Store {
            epoch: c.epoch,
            base: c.base,
            limit: c.limit,
            members: c
                .members
                .iter()
                .map(|m| (m.switch_id as usize, m.boot))
                .collect(),
        };
        let r: BTreeMap<_, _> = [report(0, 10, 5, 5, 1500), report(2, 12, 5, 5, 1400)].into();
        let acks: Vec<Option<Status>> = (0..3).map(|i| r.get(&i).copied()).collect();
        assert_eq!(
            restart_point(&c, &r),
            sequencer_p4::sim::restart_point(&store, &acks, c.max_visit)
        );
    }
}
