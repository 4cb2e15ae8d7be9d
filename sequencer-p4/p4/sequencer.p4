/*
 * The sequencer ring's switch program (P4_16, v1model architecture, for BMv2's
 * simple_switch). Protocol: ../PROTOCOL.md. The software switch (src/pipeline.rs) runs the
 * same logic; src/wire.rs is pinned to the `header seq_*` declarations below by tests that
 * parse this file, so field names, widths and order here ARE the wire format.
 *
 * Not compiled in CI (no p4c on our machines). Written for p4c-bm2-ss:
 *  - 64-bit registers and arithmetic are fine on BMv2. On Tofino (TNA) each 64-bit
 *    register becomes a pair of 32-bit halves with a carry computed in the stage after.
 *  - `client_ip` / `client_port` are instantiated at top level so ingress (learning from
 *    requests) and egress (rewriting multicast replicas) share them; on TNA the
 *    controller would instead fill a table keyed by replica id.
 *  - Every register array is read and written at one index per packet, as a switch
 *    stage allows; there are no loops, and the only fan-out is the packet replication
 *    engine's multicast (group GRP_VISIT, configured once by the control plane with
 *    replicas rid 1..64 = client slots 0..63, RID_TOKEN and RID_ALARM).
 */
#include <core.p4>
#include <v1model.p4>

/* ------------------------------------------------------------------ constants */

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<8>  IPPROTO_UDP = 17;
const bit<16> SEQ_UDP_PORT = 7650;
const bit<16> SEQ_MAGIC = 0x4753;
const bit<8>  SEQ_VERSION = 1;

const bit<8> MSG_REQUEST = 1;
const bit<8> MSG_TICKET = 2;
const bit<8> MSG_GRANT = 3;
const bit<8> MSG_REJECT = 4;
const bit<8> MSG_ANNOUNCE = 5;
const bit<8> MSG_TOKEN = 6;
const bit<8> MSG_SEAL = 7;
const bit<8> MSG_INSTALL = 8;
const bit<8> MSG_INJECT = 9;
const bit<8> MSG_PROBE = 10;
const bit<8> MSG_STATUS = 11;
const bit<8> MSG_ALARM = 12;

const bit<8> REJECT_NOT_INSTALLED = 1;
const bit<8> REJECT_WRONG_EPOCH = 2;
const bit<8> REJECT_SEALED = 3;
const bit<8> REJECT_BUSY = 4;
const bit<8> REJECT_EXPIRED = 5;
const bit<8> REJECT_BAD_REQUEST = 6;

const bit<8> ALARM_PROGRESS = 1;
const bit<8> ALARM_TOKEN_DROPPED = 2;
const bit<8> ALARM_EXHAUSTED = 3;

const bit<8> INSTALL_FLAG_HEAD = 1;
const bit<8> STATUS_FLAG_INSTALLED = 1;
const bit<8> STATUS_FLAG_SEALED = 2;
const bit<8> STATUS_FLAG_HEAD = 4;

/* Register array sizes (powers of two: indexes are bit slices). */
const bit<32> DEDUP_SLOTS = 4096;   /* index = (client ^ req_id)[11:0] */
const bit<32> ANN_SLOTS = 1024;     /* index = visit[9:0] */
const bit<32> CLIENT_SLOTS = 64;    /* index = client[5:0] */

const bit<16> GRP_VISIT = 1;
const bit<16> RID_TOKEN = 65;
const bit<16> RID_ALARM = 66;

/* Message sizes in bytes (common header included), for IP/UDP length fields. */
const bit<16> LEN_TICKET = 46;
const bit<16> LEN_GRANT = 38;
const bit<16> LEN_REJECT = 31;
const bit<16> LEN_ANNOUNCE = 42;
const bit<16> LEN_TOKEN = 24;
const bit<16> LEN_STATUS = 63;
const bit<16> LEN_ALARM = 27;

/* ------------------------------------------------------------------ headers */

header ethernet_t {
    bit<48> dst_addr;
    bit<48> src_addr;
    bit<16> ether_type;
}

header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<8>  diffserv;
    bit<16> total_len;
    bit<16> identification;
    bit<3>  flags;
    bit<13> frag_offset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdr_checksum;
    bit<32> src_addr;
    bit<32> dst_addr;
}

header udp_t {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> length;
    bit<16> checksum;
}

/* Every sequencer packet starts with this; msg_type selects exactly one header below. */
header seq_common_t {
    bit<16> magic;
    bit<8>  version;
    bit<8>  msg_type;
}

/* Broker -> home switch. (client, req_id) is the idempotence key. */
header seq_request_t {
    bit<32> epoch;
    bit<32> count;
    bit<64> client;
    bit<64> req_id;
}

/* Switch -> broker: local offsets local_off..+count, global once `visit` is announced. */
header seq_ticket_t {
    bit<32> epoch;
    bit<16> switch_id;
    bit<32> count;
    bit<64> client;
    bit<64> req_id;
    bit<64> visit;
    bit<64> local_off;
}

/* Switch -> broker: numbers gsn..gsn+count (answer to a retransmission after the visit). */
header seq_grant_t {
    bit<32> epoch;
    bit<16> switch_id;
    bit<32> count;
    bit<64> client;
    bit<64> req_id;
    bit<64> gsn;
}

header seq_reject_t {
    bit<32> epoch;      // the switch's installed epoch
    bit<16> switch_id;
    bit<8>  reason;
    bit<32> req_epoch;  // the epoch the request carried
    bit<64> client;
    bit<64> req_id;
}

/* Switch -> brokers holding tickets of this visit. */
header seq_announce_t {
    bit<32> epoch;
    bit<16> switch_id;
    bit<64> visit;
    bit<64> local_lo;
    bit<64> local_hi;
    bit<64> base;
}

/* The epoch's token, switch -> successor. */
header seq_token_t {
    bit<32> epoch;
    bit<64> seq;
    bit<64> next_base;
}

header seq_seal_t {
    bit<32> epoch;
}

header seq_install_t {
    bit<32> epoch;
    bit<16> switch_id;
    bit<8>  flags;
    bit<8>  report_shift;
    bit<32> max_visit;
    bit<32> succ_ip;
    bit<16> succ_port;
    bit<64> boot;
    bit<64> base;
    bit<64> limit;
}

header seq_inject_t {
    bit<32> epoch;
}

/* MSG_PROBE has no header of its own. */

header seq_status_t {
    bit<16> switch_id;
    bit<8>  flags;
    bit<32> epoch;
    bit<32> seal_floor;
    bit<64> boot;
    bit<64> last_seq;
    bit<64> fwd_base;
    bit<64> local_next;
    bit<64> local_prev;
    bit<64> visits;
}

header seq_alarm_t {
    bit<16> switch_id;
    bit<8>  kind;
    bit<32> epoch;
    bit<64> seq;
    bit<64> base;
}

struct headers_t {
    ethernet_t     ethernet;
    ipv4_t         ipv4;
    udp_t          udp;
    seq_common_t   common;
    seq_request_t  request;
    seq_ticket_t   ticket;
    seq_grant_t    grant;
    seq_reject_t   reject;
    seq_announce_t announce;
    seq_token_t    token;
    seq_seal_t     seal;
    seq_install_t  install;
    seq_inject_t   inject;
    seq_status_t   status;
    seq_alarm_t    alarm;
}

/* Carried from ingress to every multicast replica. */
struct meta_t {
    bit<16> switch_id;        // from the boot_config table
    bit<32> self_ip;
    bit<32> ctrl_ip;
    bit<16> ctrl_port;
    bit<32> succ_ip;
    bit<16> succ_port;
    bit<1>  emit_alarm;
    bit<8>  alarm_kind;
    bit<64> announce_mask;    // client slots holding tickets of this visit
    bit<32> epoch;
    bit<64> visit;
    bit<64> local_lo;
    bit<64> local_hi;
    bit<64> base;
    bit<64> token_seq;        // seq of the token this switch accepted
    bit<64> fwd_base;
}

/* ------------------------------------------------------------------ registers */

/* Shared by ingress (learn on request) and egress (address announcement replicas). */
register<bit<32>>(CLIENT_SLOTS) client_ip;
register<bit<16>>(CLIENT_SLOTS) client_port;

/* ------------------------------------------------------------------ parser */

parser SeqParser(packet_in pkt, out headers_t hdr, inout meta_t meta,
                 inout standard_metadata_t std) {
    state start {
        pkt.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }
    state parse_ipv4 {
        pkt.extract(hdr.ipv4);
        transition select(hdr.ipv4.protocol, hdr.ipv4.ihl) {
            (IPPROTO_UDP, 5): parse_udp;
            default: accept;
        }
    }
    state parse_udp {
        pkt.extract(hdr.udp);
        transition select(hdr.udp.dst_port) {
            SEQ_UDP_PORT: parse_common;
            default: accept;
        }
    }
    state parse_common {
        pkt.extract(hdr.common);
        verify(hdr.common.magic == SEQ_MAGIC, error.ParserInvalidArgument);
        verify(hdr.common.version == SEQ_VERSION, error.ParserInvalidArgument);
        transition select(hdr.common.msg_type) {
            MSG_REQUEST: parse_request;
            MSG_TOKEN: parse_token;
            MSG_SEAL: parse_seal;
            MSG_INSTALL: parse_install;
            MSG_INJECT: parse_inject;
            MSG_PROBE: accept;
            default: accept;    // replies addressed elsewhere: routed, not processed
        }
    }
    state parse_request { pkt.extract(hdr.request); transition accept; }
    state parse_token   { pkt.extract(hdr.token);   transition accept; }
    state parse_seal    { pkt.extract(hdr.seal);    transition accept; }
    state parse_install { pkt.extract(hdr.install); transition accept; }
    state parse_inject  { pkt.extract(hdr.inject);  transition accept; }
}

control SeqVerifyChecksum(inout headers_t hdr, inout meta_t meta) {
    apply { }
}

/* ------------------------------------------------------------------ ingress */

control SeqIngress(inout headers_t hdr, inout meta_t meta, inout standard_metadata_t std) {
    /* Epoch registers (written by Install). A crash zeroes them all: uninstalled. */
    register<bit<64>>(1) reg_boot;          // written by the switch CPU at start-up
    register<bit<32>>(1) reg_epoch;
    register<bit<32>>(1) reg_seal_floor;
    register<bit<8>>(1)  reg_head;
    register<bit<64>>(1) reg_base;
    register<bit<64>>(1) reg_limit;
    register<bit<32>>(1) reg_max_visit;
    register<bit<8>>(1)  reg_report_shift;
    register<bit<32>>(1) reg_succ_ip;
    register<bit<16>>(1) reg_succ_port;
    register<bit<32>>(1) reg_ctrl_ip;
    register<bit<16>>(1) reg_ctrl_port;
    /* Sequencing registers. */
    register<bit<64>>(1) reg_local_next;    // C_i: next local offset
    register<bit<64>>(1) reg_local_prev;    // C_i at the last visit
    register<bit<64>>(1) reg_visits;        // non-empty visits in this epoch
    register<bit<64>>(1) reg_last_seq;      // highest token seq accepted
    register<bit<64>>(1) reg_fwd_base;      // next_base of the token last forwarded
    register<bit<64>>(1) reg_pending;       // bitmap of client slots with tickets
    /* Idempotence table. */
    register<bit<32>>(DEDUP_SLOTS) dedup_epoch;
    register<bit<32>>(DEDUP_SLOTS) dedup_count;
    register<bit<64>>(DEDUP_SLOTS) dedup_client;
    register<bit<64>>(DEDUP_SLOTS) dedup_req;
    register<bit<64>>(DEDUP_SLOTS) dedup_visit;
    register<bit<64>>(DEDUP_SLOTS) dedup_off;
    /* Recent announcements, for retransmitted requests. */
    register<bit<32>>(ANN_SLOTS) ann_epoch;
    register<bit<64>>(ANN_SLOTS) ann_visit;
    register<bit<64>>(ANN_SLOTS) ann_lo;
    register<bit<64>>(ANN_SLOTS) ann_base;

    counter(8, CounterType.packets) seq_counters;  // visits, rotations, tickets, grants, rejects, drops

    bit<32> epoch;
    bit<32> seal_floor;
    bit<1>  sealed;
    bit<1>  dropped = 0;

    /* Dropping is final: the routing at the end of apply must not revive the packet. */
    action drop_packet() {
        mark_to_drop(std);
        dropped = 1;
    }

    /* Static configuration (set by the switch's own start-up config, not protocol state). */
    action set_boot_config(bit<16> switch_id, bit<32> self_ip, bit<32> ctrl_ip, bit<16> ctrl_port,
                           bit<32> default_succ_ip, bit<16> default_succ_port) {
        meta.switch_id = switch_id;
        meta.self_ip = self_ip;
        meta.ctrl_ip = ctrl_ip;
        meta.ctrl_port = ctrl_port;
        meta.succ_ip = default_succ_ip;
        meta.succ_port = default_succ_port;
    }
    table boot_config {
        actions = { set_boot_config; }
        default_action = set_boot_config(0, 0, 0, 0, 0, 0);
    }

    /* Plain IPv4 forwarding for everything that is not for us, and for what we emit. */
    action route(bit<9> port, bit<48> next_mac) {
        std.egress_spec = port;
        hdr.ethernet.src_addr = hdr.ethernet.dst_addr;
        hdr.ethernet.dst_addr = next_mac;
    }
    action unroutable() { mark_to_drop(std); }
    table ipv4_route {
        key = { hdr.ipv4.dst_addr: lpm; }
        actions = { route; unroutable; }
        default_action = unroutable();
    }

    action set_lengths(bit<16> seq_len) {
        hdr.udp.length = 8 + seq_len;
        hdr.udp.checksum = 0;           // optional in IPv4
        hdr.ipv4.total_len = 20 + 8 + seq_len;
    }

    /* Send the rewritten packet back where it came from. */
    action reply(bit<8> msg_type, bit<16> seq_len) {
        bit<32> ip = hdr.ipv4.src_addr;
        hdr.ipv4.src_addr = meta.self_ip;
        hdr.ipv4.dst_addr = ip;
        bit<16> port = hdr.udp.src_port;
        hdr.udp.src_port = SEQ_UDP_PORT;
        hdr.udp.dst_port = port;
        hdr.common.msg_type = msg_type;
        set_lengths(seq_len);
    }

    action to_controller(bit<8> kind, bit<32> alarm_epoch, bit<64> seq, bit<64> base) {
        hdr.token.setInvalid();
        hdr.alarm.setValid();
        hdr.alarm.switch_id = meta.switch_id;
        hdr.alarm.kind = kind;
        hdr.alarm.epoch = alarm_epoch;
        hdr.alarm.seq = seq;
        hdr.alarm.base = base;
        hdr.ipv4.src_addr = meta.self_ip;
        hdr.ipv4.dst_addr = meta.ctrl_ip;
        hdr.udp.src_port = SEQ_UDP_PORT;
        hdr.udp.dst_port = meta.ctrl_port;
        hdr.common.msg_type = MSG_ALARM;
        set_lengths(LEN_ALARM);
    }

    action reject_request(bit<8> reason) {
        bit<32> req_epoch = hdr.request.epoch;
        bit<64> client = hdr.request.client;
        bit<64> req_id = hdr.request.req_id;
        hdr.request.setInvalid();
        hdr.reject.setValid();
        hdr.reject.epoch = epoch;
        hdr.reject.switch_id = meta.switch_id;
        hdr.reject.reason = reason;
        hdr.reject.req_epoch = req_epoch;
        hdr.reject.client = client;
        hdr.reject.req_id = req_id;
        seq_counters.count(4);
        reply(MSG_REJECT, LEN_REJECT);
    }

    action answer_status() {
        hdr.seal.setInvalid();
        hdr.install.setInvalid();
        hdr.inject.setInvalid();
        hdr.status.setValid();
        hdr.status.switch_id = meta.switch_id;
        bit<8> head;
        reg_head.read(head, 0);
        hdr.status.flags = (epoch != 0 ? STATUS_FLAG_INSTALLED : 8w0)
                         | (epoch != 0 && epoch <= seal_floor ? STATUS_FLAG_SEALED : 8w0)
                         | (head != 0 ? STATUS_FLAG_HEAD : 8w0);
        hdr.status.epoch = epoch;
        hdr.status.seal_floor = seal_floor;
        reg_boot.read(hdr.status.boot, 0);
        reg_last_seq.read(hdr.status.last_seq, 0);
        reg_fwd_base.read(hdr.status.fwd_base, 0);
        reg_local_next.read(hdr.status.local_next, 0);
        reg_local_prev.read(hdr.status.local_prev, 0);
        reg_visits.read(hdr.status.visits, 0);
        reply(MSG_STATUS, LEN_STATUS);
    }

    /* ---- Request: fetch-and-add on C_i, or answer a retransmission from the tables. */
    action learn_client(bit<32> slot) {
        client_ip.write(slot, hdr.ipv4.src_addr);
        client_port.write(slot, hdr.udp.src_port);
    }

    action send_ticket(bit<32> count, bit<64> visit, bit<64> local_off) {
        bit<64> client = hdr.request.client;
        bit<64> req_id = hdr.request.req_id;
        hdr.request.setInvalid();
        hdr.ticket.setValid();
        hdr.ticket.epoch = epoch;
        hdr.ticket.switch_id = meta.switch_id;
        hdr.ticket.count = count;
        hdr.ticket.client = client;
        hdr.ticket.req_id = req_id;
        hdr.ticket.visit = visit;
        hdr.ticket.local_off = local_off;
        reply(MSG_TICKET, LEN_TICKET);
    }

    action send_grant(bit<32> count, bit<64> gsn) {
        bit<64> client = hdr.request.client;
        bit<64> req_id = hdr.request.req_id;
        hdr.request.setInvalid();
        hdr.grant.setValid();
        hdr.grant.epoch = epoch;
        hdr.grant.switch_id = meta.switch_id;
        hdr.grant.count = count;
        hdr.grant.client = client;
        hdr.grant.req_id = req_id;
        hdr.grant.gsn = gsn;
        seq_counters.count(3);
        reply(MSG_GRANT, LEN_GRANT);
    }

    action mark_pending(bit<32> slot) {
        bit<64> pending;
        reg_pending.read(pending, 0);
        reg_pending.write(0, pending | ((bit<64>)1 << (bit<8>)slot));
    }

    /* ---- Token visit: claim C_i - prev numbers at next_base, O(1) for any batch. */
    action forward_token(bit<64> next_base) {
        hdr.token.seq = hdr.token.seq + 1;
        hdr.token.next_base = next_base;
        hdr.ipv4.src_addr = meta.self_ip;
        hdr.udp.src_port = SEQ_UDP_PORT;
        set_lengths(LEN_TOKEN);
        // The token replica (RID_TOKEN) gets the successor's address in egress; the
        // announcement replicas and the alarm replica are made from the same packet.
        std.mcast_grp = GRP_VISIT;
    }

    apply {
        boot_config.apply();
        if (!hdr.common.isValid()) {
            if (hdr.ipv4.isValid()) { ipv4_route.apply(); } else { mark_to_drop(std); }
            return;
        }
        reg_epoch.read(epoch, 0);
        reg_seal_floor.read(seal_floor, 0);
        sealed = (epoch <= seal_floor) ? 1w1 : 1w0;
        bit<32> ctrl_ip;
        reg_ctrl_ip.read(ctrl_ip, 0);
        if (ctrl_ip != 0) {
            meta.ctrl_ip = ctrl_ip;
            reg_ctrl_port.read(meta.ctrl_port, 0);
        }

        if (hdr.request.isValid()) {
            if (epoch == 0) {
                reject_request(REJECT_NOT_INSTALLED);
            } else if (hdr.request.epoch != epoch) {
                reject_request(REJECT_WRONG_EPOCH);
            } else if (sealed == 1) {
                reject_request(REJECT_SEALED);
            } else {
                bit<32> slot = (bit<32>)hdr.request.client[5:0];
                learn_client(slot);
                bit<32> idx = (bit<32>)(hdr.request.client[11:0] ^ hdr.request.req_id[11:0]);
                bit<32> d_epoch; bit<32> d_count; bit<64> d_client; bit<64> d_req;
                bit<64> d_visit; bit<64> d_off;
                dedup_epoch.read(d_epoch, idx);
                dedup_client.read(d_client, idx);
                dedup_req.read(d_req, idx);
                dedup_count.read(d_count, idx);
                dedup_visit.read(d_visit, idx);
                dedup_off.read(d_off, idx);
                bit<64> visits;
                reg_visits.read(visits, 0);
                if (d_epoch == epoch && d_client == hdr.request.client && d_req == hdr.request.req_id) {
                    /* Retransmission: same answer, never a second allocation. */
                    if (d_count != hdr.request.count) {
                        reject_request(REJECT_BAD_REQUEST);
                    } else if (d_visit > visits) {
                        mark_pending(slot);
                        send_ticket(d_count, d_visit, d_off);
                    } else {
                        bit<32> a_epoch; bit<64> a_visit; bit<64> a_lo; bit<64> a_base;
                        bit<32> aidx = (bit<32>)d_visit[9:0];
                        ann_epoch.read(a_epoch, aidx);
                        ann_visit.read(a_visit, aidx);
                        ann_lo.read(a_lo, aidx);
                        ann_base.read(a_base, aidx);
                        if (a_epoch == epoch && a_visit == d_visit) {
                            send_grant(d_count, a_base + (d_off - a_lo));
                        } else {
                            reject_request(REJECT_EXPIRED);
                        }
                    }
                } else {
                    /* New request: admission keeps every visit at or below W numbers. */
                    bit<32> max_visit; bit<64> next; bit<64> prev;
                    reg_max_visit.read(max_visit, 0);
                    reg_local_next.read(next, 0);
                    reg_local_prev.read(prev, 0);
                    if (hdr.request.count == 0 || hdr.request.count > max_visit) {
                        reject_request(REJECT_BAD_REQUEST);
                    } else if ((next - prev) + (bit<64>)hdr.request.count > (bit<64>)max_visit) {
                        reject_request(REJECT_BUSY);
                    } else {
                        reg_local_next.write(0, next + (bit<64>)hdr.request.count);
                        dedup_epoch.write(idx, epoch);
                        dedup_client.write(idx, hdr.request.client);
                        dedup_req.write(idx, hdr.request.req_id);
                        dedup_count.write(idx, hdr.request.count);
                        dedup_visit.write(idx, visits + 1);
                        dedup_off.write(idx, next);
                        mark_pending(slot);
                        seq_counters.count(2);
                        send_ticket(hdr.request.count, visits + 1, next);
                    }
                }
            }
        } else if (hdr.token.isValid() || hdr.inject.isValid()) {
            bit<64> last_seq;
            reg_last_seq.read(last_seq, 0);
            bit<8> head;
            reg_head.read(head, 0);
            bit<1> accept = 0;
            if (hdr.inject.isValid()) {
                /* Inject: the head creates token seq 1 once per epoch (last_seq == 0). */
                if (epoch != 0 && sealed == 0 && head != 0 && hdr.inject.epoch == epoch && last_seq == 0) {
                    hdr.inject.setInvalid();
                    hdr.token.setValid();
                    hdr.token.epoch = epoch;
                    hdr.token.seq = 1;
                    reg_base.read(hdr.token.next_base, 0);
                    hdr.common.msg_type = MSG_TOKEN;
                    accept = 1;
                } else {
                    answer_status();
                }
            } else if (hdr.token.epoch != epoch || epoch == 0) {
                /* A newer epoch's token we cannot carry: the ring is broken here. */
                if (hdr.token.epoch > epoch) {
                    seq_counters.count(7);
                    to_controller(ALARM_TOKEN_DROPPED, hdr.token.epoch, hdr.token.seq, hdr.token.next_base);
                } else {
                    drop_packet();
                }
            } else if (sealed == 1 || hdr.token.seq <= last_seq) {
                drop_packet();   // sealed, or a duplicate / stale copy
            } else {
                accept = 1;
            }

            if (accept == 1) {
                bit<64> next; bit<64> prev; bit<64> limit;
                reg_local_next.read(next, 0);
                reg_local_prev.read(prev, 0);
                reg_limit.read(limit, 0);
                bit<64> batch = next - prev;
                bit<64> end = hdr.token.next_base + batch;
                if (end < hdr.token.next_base || end > limit) {
                    /* Epoch used up: seal ourselves, stop the token, tell the controller. */
                    reg_seal_floor.write(0, epoch);
                    to_controller(ALARM_EXHAUSTED, epoch, hdr.token.seq, hdr.token.next_base);
                } else {
                    meta.announce_mask = 0;
                    if (batch > 0) {
                        bit<64> visits;
                        reg_visits.read(visits, 0);
                        visits = visits + 1;
                        reg_visits.write(0, visits);
                        bit<32> aidx = (bit<32>)visits[9:0];
                        ann_epoch.write(aidx, epoch);
                        ann_visit.write(aidx, visits);
                        ann_lo.write(aidx, prev);
                        ann_base.write(aidx, hdr.token.next_base);
                        reg_pending.read(meta.announce_mask, 0);
                        reg_pending.write(0, 0);
                        reg_local_prev.write(0, next);
                        meta.visit = visits;
                        meta.local_lo = prev;
                        meta.local_hi = next;
                        meta.base = hdr.token.next_base;
                    }
                    reg_last_seq.write(0, hdr.token.seq);
                    reg_fwd_base.write(0, end);
                    meta.epoch = epoch;
                    meta.token_seq = hdr.token.seq;
                    meta.fwd_base = end;
                    bit<8> shift;
                    reg_report_shift.read(shift, 0);
                    bit<64> mask = ((bit<64>)1 << shift) - 1;
                    meta.emit_alarm = (hdr.token.seq == 1 || (hdr.token.seq & mask) == 0) ? 1w1 : 1w0;
                    meta.alarm_kind = ALARM_PROGRESS;
                    reg_succ_ip.read(meta.succ_ip, 0);
                    reg_succ_port.read(meta.succ_port, 0);
                    seq_counters.count(0);
                    if (head != 0) { seq_counters.count(1); }
                    forward_token(end);
                }
            }
        } else if (hdr.seal.isValid()) {
            /* Seal: the floor only rises, so seals are idempotent and commute. */
            if (hdr.seal.epoch > seal_floor) {
                seal_floor = hdr.seal.epoch;
                reg_seal_floor.write(0, seal_floor);
            }
            reg_ctrl_ip.write(0, hdr.ipv4.src_addr);
            reg_ctrl_port.write(0, hdr.udp.src_port);
            answer_status();
        } else if (hdr.install.isValid()) {
            /* Install: only for this incarnation, only above every sealed epoch, once. */
            bit<64> boot;
            reg_boot.read(boot, 0);
            bit<32> succ_ip = hdr.install.succ_ip;
            bit<16> succ_port = hdr.install.succ_port;
            if (succ_port == 0) { succ_ip = meta.succ_ip; succ_port = meta.succ_port; }
            if (hdr.install.boot == boot && hdr.install.switch_id == meta.switch_id
                && hdr.install.epoch > seal_floor && hdr.install.epoch > epoch
                && hdr.install.max_visit > 0 && hdr.install.limit > hdr.install.base
                && succ_port != 0) {
                epoch = hdr.install.epoch;
                reg_epoch.write(0, epoch);
                reg_head.write(0, hdr.install.flags & INSTALL_FLAG_HEAD);
                reg_base.write(0, hdr.install.base);
                reg_limit.write(0, hdr.install.limit);
                reg_max_visit.write(0, hdr.install.max_visit);
                reg_report_shift.write(0, hdr.install.report_shift > 63 ? 8w63 : hdr.install.report_shift);
                reg_succ_ip.write(0, succ_ip);
                reg_succ_port.write(0, succ_port);
                reg_ctrl_ip.write(0, hdr.ipv4.src_addr);
                reg_ctrl_port.write(0, hdr.udp.src_port);
                /* Epoch-scoped registers restart; array rows carry their epoch instead. */
                reg_local_next.write(0, 0);
                reg_local_prev.write(0, 0);
                reg_visits.write(0, 0);
                reg_last_seq.write(0, 0);
                reg_fwd_base.write(0, 0);
                reg_pending.write(0, 0);
            }
            answer_status();
        } else if (hdr.common.msg_type == MSG_PROBE) {
            answer_status();
        } else {
            /* Tickets, announcements, statuses... addressed to others: just route. */
            ipv4_route.apply();
            return;
        }
        if (dropped == 0 && std.mcast_grp == 0) {
            ipv4_route.apply();
        }
    }
}

/* ------------------------------------------------------------------ egress */

control SeqEgress(inout headers_t hdr, inout meta_t meta, inout standard_metadata_t std) {
    apply {
        if (std.mcast_grp != GRP_VISIT) {
            return;     // unicast replies and alarms were finished in ingress
        }
        if (std.egress_rid == RID_TOKEN) {
            hdr.ipv4.dst_addr = meta.succ_ip;
            hdr.udp.dst_port = meta.succ_port;
        } else if (std.egress_rid == RID_ALARM) {
            if (meta.emit_alarm == 0) { mark_to_drop(std); return; }
            hdr.token.setInvalid();
            hdr.alarm.setValid();
            hdr.alarm.switch_id = meta.switch_id;
            hdr.alarm.kind = meta.alarm_kind;
            hdr.alarm.epoch = meta.epoch;
            hdr.alarm.seq = meta.token_seq;
            hdr.alarm.base = meta.fwd_base;
            hdr.common.msg_type = MSG_ALARM;
            hdr.ipv4.dst_addr = meta.ctrl_ip;
            hdr.udp.dst_port = meta.ctrl_port;
            hdr.udp.length = 8 + LEN_ALARM;
            hdr.ipv4.total_len = 28 + LEN_ALARM;
        } else {
            /* Announcement replica for client slot rid-1, if it holds a ticket. */
            bit<32> slot = (bit<32>)(std.egress_rid - 1);
            bit<32> ip;
            bit<16> port;
            client_ip.read(ip, slot);
            client_port.read(port, slot);
            if (((meta.announce_mask >> (bit<8>)slot) & 1) == 0 || port == 0) {
                mark_to_drop(std);
                return;
            }
            hdr.token.setInvalid();
            hdr.announce.setValid();
            hdr.announce.epoch = meta.epoch;
            hdr.announce.switch_id = meta.switch_id;
            hdr.announce.visit = meta.visit;
            hdr.announce.local_lo = meta.local_lo;
            hdr.announce.local_hi = meta.local_hi;
            hdr.announce.base = meta.base;
            hdr.common.msg_type = MSG_ANNOUNCE;
            hdr.ipv4.dst_addr = ip;
            hdr.udp.dst_port = port;
            hdr.udp.length = 8 + LEN_ANNOUNCE;
            hdr.ipv4.total_len = 28 + LEN_ANNOUNCE;
        }
        // Egress port and next-hop MAC of a replica come from the PRE's replica entry
        // (the control plane configures GRP_VISIT with the ports toward each address).
    }
}

control SeqComputeChecksum(inout headers_t hdr, inout meta_t meta) {
    apply {
        update_checksum(hdr.ipv4.isValid(),
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.diffserv, hdr.ipv4.total_len,
              hdr.ipv4.identification, hdr.ipv4.flags, hdr.ipv4.frag_offset, hdr.ipv4.ttl,
              hdr.ipv4.protocol, hdr.ipv4.src_addr, hdr.ipv4.dst_addr },
            hdr.ipv4.hdr_checksum, HashAlgorithm.csum16);
    }
}

control SeqDeparser(packet_out pkt, in headers_t hdr) {
    apply {
        pkt.emit(hdr.ethernet);
        pkt.emit(hdr.ipv4);
        pkt.emit(hdr.udp);
        pkt.emit(hdr.common);
        // Exactly one of these is valid on the way out.
        pkt.emit(hdr.request);
        pkt.emit(hdr.ticket);
        pkt.emit(hdr.grant);
        pkt.emit(hdr.reject);
        pkt.emit(hdr.announce);
        pkt.emit(hdr.token);
        pkt.emit(hdr.seal);
        pkt.emit(hdr.install);
        pkt.emit(hdr.inject);
        pkt.emit(hdr.status);
        pkt.emit(hdr.alarm);
    }
}

V1Switch(SeqParser(), SeqVerifyChecksum(), SeqIngress(), SeqEgress(), SeqComputeChecksum(),
         SeqDeparser()) main;
