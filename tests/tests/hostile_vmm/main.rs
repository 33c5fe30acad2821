//! The hostile VMM: malformed vhost-user sessions (framing, protocol, memory tables, rings,
//! config space, disconnects, floods). The VMM is not trusted, so no session may take the
//! daemon down: after each one the same daemon process is alive and serves a fresh, correct
//! session (negotiation, memory, rings, ATTACH + MAP + UNMAP answered OK and seen on the
//! control socket), and when it is stopped at the end it exits 0, never by a signal.
//!
//! Every session is its own test (one daemon each), and `every_session_against_one_daemon`
//! runs them all in a row against a single daemon, checking after each that its open file
//! count is back where it started. `regressions` holds the tests of the three defects of the
//! hostile-VMM issue (a region past the end of its file, an fd leaked per connection, an
//! interrupt despite VRING_AVAIL_F_NO_INTERRUPT) and the 5000 connect/close cycles under a
//! 256-fd limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod framing;
mod fuzz;
mod memory;
mod protocol;
mod regressions;
mod rings;

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::proto::{MAP_F_READ, MAP_F_WRITE};
use vhost_user_iommu_tests::raw::{Raw, Region, Reply};
use vhost_user_iommu_tests::{Control, Daemon, Device, Options};

pub const RW: u32 = MAP_F_READ | MAP_F_WRITE;
/// How long a refusal or a close may take.
pub const T: Duration = Duration::from_secs(5);
/// How long a request that must not be answered is waited for.
pub const QUIET: Duration = Duration::from_millis(300);

/// A daemon under attack, its control socket, and the number of vhost-user connections made to
/// it so far (the daemon serves them one at a time, in order).
#[derive(Debug)]
pub struct Env {
    pub daemon: Daemon,
    pub ctl: Control,
    conns: u64,
}

impl Env {
    pub fn start() -> Env {
        Self::with(Daemon::start(&[]))
    }

    pub fn with(daemon: Daemon) -> Env {
        let ctl = daemon.ctl();
        Env {
            daemon,
            ctl,
            conns: 0,
        }
    }

    /// Count a connection made without the helpers below.
    pub fn count_connection(&mut self) {
        self.conns += 1;
    }

    /// A connection that has said nothing yet.
    pub fn bare(&mut self) -> Raw {
        self.conns += 1;
        Raw::connect(&self.daemon.socket).expect("connect")
    }

    /// A negotiated connection without memory or rings.
    pub fn negotiated(&mut self) -> Raw {
        self.conns += 1;
        Raw::negotiated(&self.daemon.socket)
            .unwrap_or_else(|e| panic!("negotiation: {e}\n{}", self.daemon.stderr()))
    }

    /// A connection with a working device (memory, both rings), raw socket beside it.
    pub fn ready(&mut self) -> Raw {
        self.ready_with(&Options::default())
    }

    pub fn ready_with(&mut self, opts: &Options) -> Raw {
        self.conns += 1;
        Raw::ready(&self.daemon.socket, opts)
            .unwrap_or_else(|e| panic!("device setup: {e}\n{}", self.daemon.stderr()))
    }

    /// Wait until the daemon has finished with every connection made so far.
    pub fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = match self.ctl.request(&vhost_user_iommu_control::Request::Status) {
                Ok(st) => st,
                Err(e) => {
                    // A control socket gone: show how the daemon died if it did.
                    if let Some(st) = self.daemon.wait_exit(Duration::from_secs(2)) {
                        panic!("the daemon died ({st}); stderr:\n{}", self.daemon.stderr());
                    }
                    panic!("control socket: {e}");
                }
            };
            if st["connections"].as_u64().unwrap_or(0) >= self.conns
                && st["connected"].as_bool() == Some(false)
            {
                return;
            }
            self.daemon.assert_alive();
            assert!(
                Instant::now() < deadline,
                "the daemon did not finish connection {} ({st})",
                self.conns
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// After a hostile session (closed by now): the same daemon is alive, its control socket
    /// answers, and a fresh, correct session works end to end.
    pub fn still_serves(&mut self, case: &str) {
        self.settle();
        self.daemon.assert_alive();
        let st = self.ctl.status();
        assert_eq!(st["domains"].as_u64(), Some(0), "{case}: {st}");
        assert_eq!(st["mappings"].as_u64(), Some(0), "{case}: {st}");
        self.conns += 1;
        let mut d = Device::connect(&self.daemon.socket, &Options::default()).unwrap_or_else(|e| {
            panic!(
                "{case}: a fresh session after it failed: {e}\n{}",
                self.daemon.stderr()
            )
        });
        fresh_requests(&mut d, &mut self.ctl, case);
        drop(d);
        self.settle();
        self.daemon.assert_alive();
    }

    /// Stop the daemon: it must exit 0 on SIGTERM (a daemon that died of a signal earlier
    /// fails here too).
    pub fn finish(mut self, case: &str) {
        self.daemon.assert_alive();
        self.daemon.signal(libc::SIGTERM);
        let st = self.daemon.wait_exit(T).expect("no exit after SIGTERM");
        assert_eq!(
            st.code(),
            Some(0),
            "{case}: exit status {st}; stderr:\n{}",
            self.daemon.stderr()
        );
    }
}

/// ATTACH + MAP + UNMAP answered OK, the mapping visible on the control socket in between.
pub fn fresh_requests(d: &mut Device, ctl: &mut Control, case: &str) {
    assert_eq!(d.attach(1, 3), OK, "{case}: ATTACH in a fresh session");
    assert_eq!(
        d.map(1, 0x10000, 0x1ffff, 0x100000, RW),
        OK,
        "{case}: MAP in a fresh session"
    );
    let t = ctl.translate(3, 0x10010, "r");
    assert_eq!(t["outcome"], "translated", "{case}: {t}");
    assert_eq!(t["phys"].as_u64(), Some(0x100010), "{case}: {t}");
    assert_eq!(
        d.unmap(1, 0x10000, 0x1ffff),
        OK,
        "{case}: UNMAP in a fresh session"
    );
    assert_eq!(ctl.mappings(1).unwrap().len(), 0, "{case}");
}

/// A REPLY_ACK (or u64 reply) carrying a non-zero value: the request was refused and the
/// connection stays open.
#[track_caller]
pub fn refused(r: Reply, what: &str) {
    match r.value() {
        Some(v) if v != 0 => {}
        _ => panic!("{what}: expected a refusal (a non-zero ack), got {r:?}"),
    }
}

/// A zero REPLY_ACK: accepted.
#[track_caller]
pub fn accepted(r: Reply, what: &str) {
    assert_eq!(
        r.value(),
        Some(0),
        "{what}: expected an ack of 0, got {r:?}"
    );
}

/// The daemon ends the connection (a refusal's ack may come first).
#[track_caller]
pub fn dropped(raw: &Raw, what: &str) {
    assert!(
        raw.closed_by_daemon(T),
        "{what}: the daemon did not end the connection"
    );
}

/// The connection still answers after a refusal.
#[track_caller]
pub fn still_talks(raw: &Raw, what: &str) {
    assert!(
        raw.alive().is_some(),
        "{what}: the connection stopped answering after a refusal"
    );
}

/// The table of a working device, as (regions, their fds), to resend or extend.
pub fn device_table(d: &Device) -> (Vec<Region>, Vec<RawFd>) {
    d.mem
        .region_infos()
        .iter()
        .map(|r| {
            (
                Region {
                    gpa: r.guest_phys_addr,
                    size: r.memory_size,
                    user_addr: r.userspace_addr,
                    offset: r.mmap_offset,
                },
                r.mmap_handle,
            )
        })
        .unzip()
}

/// A request on a ready session is answered OK (its memory table and rings still work).
#[track_caller]
pub fn device_works(raw: &mut Raw, what: &str) {
    let d = raw.dev();
    assert_eq!(d.attach(9, 9), OK, "{what}: the session's own device");
    assert_eq!(d.detach(9, 9), OK, "{what}: the session's own device");
}

/// The raw descriptor of anything that has one.
pub fn fd(f: &impl AsRawFd) -> RawFd {
    f.as_raw_fd()
}

pub type Case = fn(&mut Env);

macro_rules! sessions {
    ($($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let mut env = Env::start();
                $module::$name(&mut env);
                env.still_serves(stringify!($name));
                env.finish(stringify!($name));
            }
        )*
        /// Every session, by name.
        pub const SESSIONS: &[(&str, Case)] = &[$((stringify!($name), $module::$name)),*];
    };
}

sessions! {
    framing::disconnect_mid_header,
    framing::disconnect_mid_payload,
    framing::payload_shorter_than_its_body,
    framing::payload_longer_than_its_body,
    framing::size_beyond_the_largest_message,
    framing::size_u32_max_and_nothing_after,
    framing::unknown_code_zero,
    framing::unknown_code_far_beyond,
    framing::message_of_another_device_type,
    framing::iotlb_message,
    framing::version_zero,
    framing::reserved_flag_bits,
    framing::reply_flag_on_a_request,
    framing::garbage_bytes,
    framing::fds_on_a_message_that_takes_none,
    framing::more_fds_than_the_protocol_allows,
    framing::every_request_code_with_junk,
    protocol::set_owner_twice,
    protocol::features_never_offered,
    protocol::protocol_features_never_offered_then_inflight_fd,
    protocol::get_config_without_the_config_feature,
    protocol::vring_enable_with_a_bad_value,
    protocol::backend_req_fd_that_is_not_a_socket,
    protocol::backend_req_fd_that_is_a_socket,
    protocol::gpu_socket_that_is_not_a_socket,
    protocol::gpu_socket_that_is_a_socket,
    protocol::log_base_beyond_its_file,
    protocol::device_state_fd_with_a_bad_direction,
    protocol::check_device_state_without_a_transfer,
    protocol::reset_device_with_requests_in_flight,
    protocol::get_config_past_the_end,
    protocol::get_config_at_a_huge_offset,
    protocol::get_config_whose_size_field_lies,
    protocol::set_config_out_of_range,
    protocol::set_config_over_read_only_fields,
    protocol::flood_of_messages_without_replies,
    protocol::frontend_that_never_reads_replies,
    protocol::flood_of_memory_tables,
    protocol::flood_of_call_eventfds,
    protocol::flood_of_kicks,
    protocol::flood_of_kick_eventfds,
    protocol::flood_of_err_eventfds,
    protocol::flood_of_backend_req_sockets,
    protocol::reset_owner_mid_session,
    protocol::features_changed_while_running,
    protocol::inflight_fd_set,
    protocol::state_load_of_junk,
    protocol::state_load_never_finished,
    protocol::state_save_into_a_closed_pipe,
    memory::region_past_the_end_of_its_file,
    memory::region_offset_past_the_end_of_its_file,
    memory::unsealed_memfd_shrunk_later,
    memory::plain_file_as_guest_ram,
    memory::dev_zero_as_guest_ram,
    memory::pipe_as_guest_ram,
    memory::read_only_descriptor_of_guest_ram,
    memory::write_sealed_memfd,
    memory::overlapping_regions,
    memory::region_wrapping_the_guest_physical_space,
    memory::region_wrapping_the_file_offset,
    memory::region_larger_than_the_address_space,
    memory::unaligned_file_offset,
    memory::fewer_fds_than_regions,
    memory::table_without_fds,
    memory::table_with_zero_regions,
    memory::table_with_more_regions_than_allowed,
    memory::table_whose_count_disagrees_with_its_size,
    memory::add_mem_reg_past_the_end_of_its_file,
    memory::add_mem_reg_without_an_fd,
    memory::rem_mem_reg_of_the_rings,
    memory::add_mem_reg_overlapping_a_region,
    memory::rem_mem_reg_of_a_missing_region,
    memory::memory_table_replaced_under_a_batch,
    memory::event_buffers_in_removed_memory,
    rings::ring_outside_guest_memory,
    rings::ring_straddling_the_end_of_a_region,
    rings::rings_overlapping_each_other,
    rings::misaligned_ring_addresses,
    rings::ring_size_zero,
    rings::ring_size_beyond_the_maximum,
    rings::ring_size_not_a_power_of_two,
    rings::ring_index_out_of_range,
    rings::get_vring_base_of_a_missing_ring,
    rings::avail_index_far_ahead,
    rings::vring_base_beyond_the_queue_size,
    rings::kick_without_an_fd_or_the_no_fd_flag,
    rings::kick_fd_that_is_a_regular_file,
    rings::call_fd_that_is_a_pipe_read_end,
    rings::kick_and_call_are_one_eventfd,
    rings::kick_a_stopped_ring,
    rings::ring_grown_while_running,
    fuzz::random_well_framed_messages,
}

#[test]
fn every_session_against_one_daemon() {
    let mut env = Env::start();
    env.still_serves("warm-up");
    let baseline = env.daemon.fd_count();
    let mut worst = baseline;
    for (name, case) in SESSIONS {
        case(&mut env);
        env.still_serves(name);
        let n = env.daemon.fd_count();
        worst = worst.max(n);
        assert!(
            n <= baseline + 2,
            "{name}: the daemon has {n} open files after it, {baseline} before the first session"
        );
    }
    eprintln!(
        "{} sessions against one daemon: {baseline} open files before, {} after, at most {worst}",
        SESSIONS.len(),
        env.daemon.fd_count()
    );
    env.finish("every session");
}
