//! The restart point (PROTOCOL.md, "Choosing the restart point"): the base of epoch e+1,
//! above every number epoch e can have issued, computed from the sealed switches' reports.

pub use sequencer_p4::control::restart_point_of as restart_point;

#[cfg(test)]
mod tests {
    use super::*;
    use sequencer_p4::config::{RingConfig, RingMember};
    use sequencer_p4::wire::Status;
    use std::collections::BTreeMap;
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
}
