//! A vhost-user frontend session: negotiation, memory table, both virtqueues, and helpers to
//! send virtio-iommu requests and collect fault records.

use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserHeaderFlag,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use crate::mem::{GuestMemory, HIGH_REGION_GPA};
use crate::proto::{self, feature, Config, FaultRecord, CONFIG_LEN, FAULT_RECORD_LEN, TAIL_LEN};
use crate::virtq::{SplitQueue, Used, DEFAULT_TIMEOUT};

/// Request queue index.
pub const REQUESTQ: usize = 0;
/// Event queue index.
pub const EVENTQ: usize = 1;

/// Byte used to pre-fill device-writable buffers, to detect what the device wrote.
pub const SENTINEL: u8 = 0xa5;

/// How to set the session up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Virtio features to ack, intersected with what is offered. `None`: every standard
    /// feature offered except legacy BYPASS (plus BYPASS if it is offered without BYPASS_CONFIG).
    pub features: Option<u64>,
    /// Low region size (guest-physical 0).
    pub low_size: u64,
    /// Also give a region at 4 GiB of this size (0 = none).
    pub high_size: u64,
    /// Request queue size.
    pub requestq_size: u16,
    /// Event queue size.
    pub eventq_size: u16,
    /// Enable the vrings with SET_VRING_ENABLE.
    pub enable: bool,
    /// Ack VHOST_USER_F_PROTOCOL_FEATURES when offered (without it: no GET_CONFIG, and the
    /// rings start enabled).
    pub protocol_features: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            features: None,
            low_size: 16 << 20,
            high_size: 2 << 20,
            requestq_size: 256,
            eventq_size: 64,
            enable: true,
            protocol_features: true,
        }
    }
}

/// A request: the device-readable bytes, and how many device-writable bytes follow
/// (the status tail included).
#[derive(Debug, Clone)]
pub struct Request {
    /// Device-readable part.
    pub readable: Vec<u8>,
    /// Device-writable length (>= 4 for a well-formed request).
    pub writable_len: usize,
}

impl Request {
    /// A request whose writable part is just the 4-byte tail.
    pub fn new(readable: Vec<u8>) -> Request {
        Request {
            readable,
            writable_len: TAIL_LEN,
        }
    }

    /// ATTACH.
    pub fn attach(domain: u32, endpoint: u32, flags: u32) -> Request {
        Request::new(proto::attach(domain, endpoint, flags))
    }

    /// DETACH.
    pub fn detach(domain: u32, endpoint: u32) -> Request {
        Request::new(proto::detach(domain, endpoint))
    }

    /// MAP.
    pub fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Request {
        Request::new(proto::map(domain, start, end, phys, flags))
    }

    /// UNMAP.
    pub fn unmap(domain: u32, start: u64, end: u64) -> Request {
        Request::new(proto::unmap(domain, start, end))
    }

    /// PAGE_RESP (PASID extension).
    pub fn page_resp(endpoint: u32, pasid: Option<u32>, grpid: u32, code: u16) -> Request {
        Request::new(proto::page_resp(endpoint, pasid, grpid, code))
    }

    /// ATTACH_TABLE (PASID extension) of `format` with descriptor `desc`.
    pub fn attach_table(domain: u32, format: u16, desc: &[u8]) -> Request {
        Request::new(proto::attach_table(domain, format, desc))
    }

    /// DETACH_TABLE (PASID extension).
    pub fn detach_table(domain: u32) -> Request {
        Request::new(proto::detach_table(domain))
    }

    /// INVALIDATE (PASID extension).
    pub fn invalidate(i: &proto::Invalidate) -> Request {
        Request::new(proto::invalidate(i))
    }

    /// ATTACH_PASID (PASID extension).
    pub fn attach_pasid(domain: u32, endpoint: u32, pasid: u32) -> Request {
        Request::new(proto::attach_pasid(domain, endpoint, pasid))
    }

    /// DETACH_PASID (PASID extension).
    pub fn detach_pasid(domain: u32, endpoint: u32, pasid: u32) -> Request {
        Request::new(proto::detach_pasid(domain, endpoint, pasid))
    }

    /// PROBE with a properties buffer of `props_len` bytes.
    pub fn probe(endpoint: u32, props_len: usize) -> Request {
        Request {
            readable: proto::probe(endpoint),
            writable_len: props_len + TAIL_LEN,
        }
    }

    /// Overwrite one byte of the readable part (reserved-field and flag tests).
    pub fn with_byte(mut self, offset: usize, value: u8) -> Request {
        self.readable[offset] = value;
        self
    }
}

/// What came back for one request.
#[derive(Debug, Clone)]
pub struct Response {
    /// Head descriptor index.
    pub head: u16,
    /// Used length reported by the device.
    pub used_len: u32,
    /// The whole device-writable area after completion.
    pub writable: Vec<u8>,
}

impl Response {
    /// Status byte (first byte of the last 4 writable bytes).
    pub fn status(&self) -> u8 {
        assert!(self.writable.len() >= TAIL_LEN, "no tail in this request");
        self.writable[self.writable.len() - TAIL_LEN]
    }

    /// Whether the device left the writable area untouched.
    pub fn untouched(&self) -> bool {
        self.writable.iter().all(|&b| b == SENTINEL)
    }

    /// The PROBE properties area (writable part minus the tail).
    pub fn properties(&self) -> &[u8] {
        &self.writable[..self.writable.len() - TAIL_LEN]
    }

    /// Assert a completed request with status `want` and a plausible used length.
    pub fn expect(&self, want: u8, what: &str) {
        assert!(
            self.used_len > 0,
            "{what}: used length 0 (device returned the buffer without a status)"
        );
        assert!(
            self.used_len as usize <= self.writable.len(),
            "{what}: used length {} exceeds the {}-byte writable area",
            self.used_len,
            self.writable.len()
        );
        let got = self.status();
        let n = self.writable.len();
        assert_eq!(
            self.writable[n - 3..],
            [0, 0, 0],
            "{what}: the tail's reserved bytes SHOULD be zero"
        );
        assert_eq!(
            got,
            want,
            "{what}: status {} ({got}), expected {} ({want})",
            proto::status::name(got),
            proto::status::name(want)
        );
    }
}

/// Bytes of guard pattern placed after every writable area (to catch writes past it).
pub const GUARD_LEN: usize = 16;
/// The guard pattern byte.
pub const GUARD: u8 = 0x3c;

/// What the harness remembers about an in-flight request.
#[derive(Debug, Clone)]
struct Pending {
    /// Writable area (gpa, len).
    writable: (u64, usize),
    /// Readable area and its original bytes, checked unchanged on completion.
    readable: Option<(u64, Vec<u8>)>,
    /// A guard after the writable area, checked untouched on completion.
    guard: Option<u64>,
}

/// A connected, configured virtio-iommu device as the driver sees it.
pub struct Device {
    /// The vhost-user frontend.
    pub fe: Frontend,
    /// Guest memory shared with the daemon.
    pub mem: GuestMemory,
    /// Queue 0.
    pub reqq: SplitQueue,
    /// Queue 1.
    pub evq: SplitQueue,
    /// Features the device offered.
    pub offered: u64,
    /// Features we acked.
    pub acked: u64,
    /// Protocol features the device offered.
    pub protocol_offered: VhostUserProtocolFeatures,
    /// Writable area (gpa, len) of each in-flight request head.
    pending: std::collections::HashMap<u16, Pending>,
    /// Event buffers (gpa) of each in-flight eventq head.
    event_bufs: std::collections::HashMap<u16, u64>,
    /// Memory region (index) where request and event buffers are allocated.
    pub buf_region: usize,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("acked", &format_args!("{:#x}", self.acked))
            .field("reqq", &self.reqq)
            .field("evq", &self.evq)
            .finish_non_exhaustive()
    }
}

/// A pipe: (read end, write end).
fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

fn err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

impl Device {
    /// Connect to `socket` and bring the device up as a driver would.
    pub fn connect(socket: &Path, opts: &Options) -> Result<Device, String> {
        let fe = Frontend::connect(socket, 2).map_err(err("connect"))?;
        Self::setup(fe, opts)
    }

    /// Negotiate, hand over memory and set up both queues on an existing frontend.
    pub fn setup(mut fe: Frontend, opts: &Options) -> Result<Device, String> {
        fe.set_owner().map_err(err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(err("GET_FEATURES"))?;
        let want = opts.features.unwrap_or({
            let mut f = feature::MODERN;
            if offered & feature::BYPASS_CONFIG == 0 {
                f |= feature::BYPASS;
            }
            f
        });
        let mut acked = want & offered;
        if opts.protocol_features {
            acked |= offered & feature::PROTOCOL_FEATURES;
        }
        fe.set_features(acked).map_err(err("SET_FEATURES"))?;
        let mut protocol_offered = VhostUserProtocolFeatures::empty();
        if acked & feature::PROTOCOL_FEATURES != 0 {
            protocol_offered = fe
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::RESET_DEVICE
                | VhostUserProtocolFeatures::DEVICE_STATE;
            fe.set_protocol_features(protocol_offered & wanted)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            if protocol_offered.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every later message without a reply of its own gets an ack, so a rejected
                // SET_* shows up as an error here instead of passing silently.
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }

        let mut layout = vec![(0u64, opts.low_size)];
        if opts.high_size > 0 {
            layout.push((HIGH_REGION_GPA, opts.high_size));
        }
        let mem = GuestMemory::new(&layout, 1 << 20).map_err(err("guest memory"))?;
        fe.set_mem_table(&mem.region_infos())
            .map_err(err("SET_MEM_TABLE"))?;

        let mut reqq = SplitQueue::new(&mem, REQUESTQ, opts.requestq_size);
        let mut evq = SplitQueue::new(&mem, EVENTQ, opts.eventq_size);
        reqq.event_idx = acked & feature::RING_EVENT_IDX != 0;
        evq.event_idx = reqq.event_idx;
        for q in [&reqq, &evq] {
            fe.set_vring_num(q.index, q.size)
                .map_err(err("SET_VRING_NUM"))?;
            fe.set_vring_addr(q.index, &q.config(&mem))
                .map_err(err("SET_VRING_ADDR"))?;
            fe.set_vring_base(q.index, 0)
                .map_err(err("SET_VRING_BASE"))?;
            fe.set_vring_call(q.index, &q.call)
                .map_err(err("SET_VRING_CALL"))?;
            fe.set_vring_kick(q.index, &q.kick)
                .map_err(err("SET_VRING_KICK"))?;
        }
        if opts.enable && acked & feature::PROTOCOL_FEATURES != 0 {
            for q in [&reqq, &evq] {
                fe.set_vring_enable(q.index, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
        }
        // Without REPLY_ACK the SET_* messages above are fire-and-forget. A request with a reply
        // is a barrier: the daemon handles messages in order, so once it answers, the rings are
        // set up (the control socket, served by another thread, then sees a ready device).
        fe.get_features().map_err(err("GET_FEATURES (barrier)"))?;
        Ok(Device {
            fe,
            mem,
            reqq,
            evq,
            offered,
            acked,
            protocol_offered,
            pending: Default::default(),
            event_bufs: Default::default(),
            buf_region: 0,
        })
    }

    /// Add a guest memory region at `gpa` and send the new table (SET_MEM_TABLE) to the daemon.
    /// Returns the region index (usable as `buf_region`).
    pub fn hotplug_region(&mut self, gpa: u64, size: u64) -> Result<usize, String> {
        let i = self
            .mem
            .add_region(gpa, size)
            .map_err(err("guest memory"))?;
        self.region_added(i)
    }

    /// A region now sits at index `i`: keep `buf_region` on its region, send the table.
    fn region_added(&mut self, i: usize) -> Result<usize, String> {
        if self.buf_region >= i {
            self.buf_region += 1;
        }
        self.send_mem_table()?;
        Ok(i)
    }

    fn send_mem_table(&mut self) -> Result<(), String> {
        self.fe
            .set_mem_table(&self.mem.region_infos())
            .map_err(err("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Hot-unplug the region at `gpa`: send a memory table without it (SET_MEM_TABLE). The
    /// region stays mapped in this process (its pages can still be checked) until
    /// `replug_region`. `buf_region` keeps pointing at the same region if it is another one.
    pub fn unplug_region(&mut self, gpa: u64) -> Result<(), String> {
        let i = self
            .mem
            .unplug(gpa)
            .ok_or_else(|| format!("no region at {gpa:#x}"))?;
        if self.buf_region > i {
            self.buf_region -= 1;
        }
        self.send_mem_table()
    }

    /// Put an unplugged region back (the same memfd and pages) and send the new table.
    /// Returns its index.
    pub fn replug_region(&mut self, gpa: u64) -> Result<usize, String> {
        let i = self
            .mem
            .replug(gpa)
            .ok_or_else(|| format!("no unplugged region at {gpa:#x}"))?;
        self.region_added(i)
    }

    /// Stop both rings with GET_VRING_BASE (what a VMM does when the VM pauses or the device
    /// stops) and return the bases the daemon reported.
    pub fn stop_rings(&mut self) -> Result<[u32; 2], String> {
        let r = self
            .fe
            .get_vring_base(REQUESTQ)
            .map_err(err("GET_VRING_BASE 0"))?;
        let e = self
            .fe
            .get_vring_base(EVENTQ)
            .map_err(err("GET_VRING_BASE 1"))?;
        Ok([r, e])
    }

    /// Start both rings again where they stopped (SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE).
    pub fn start_rings(&mut self, bases: [u32; 2]) -> Result<(), String> {
        for (q, base) in [(&self.reqq, bases[0]), (&self.evq, bases[1])] {
            let base = u16::try_from(base).map_err(err("vring base"))?;
            self.fe
                .set_vring_num(q.index, q.size)
                .map_err(err("SET_VRING_NUM"))?;
            self.fe
                .set_vring_addr(q.index, &q.config(&self.mem))
                .map_err(err("SET_VRING_ADDR"))?;
            self.fe
                .set_vring_base(q.index, base)
                .map_err(err("SET_VRING_BASE"))?;
            self.fe
                .set_vring_call(q.index, &q.call)
                .map_err(err("SET_VRING_CALL"))?;
            self.fe
                .set_vring_kick(q.index, &q.kick)
                .map_err(err("SET_VRING_KICK"))?;
            if self.acked & feature::PROTOCOL_FEATURES != 0 {
                self.fe
                    .set_vring_enable(q.index, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Live migration, source side: with the rings stopped, SET_DEVICE_STATE_FD(SAVE) and read
    /// the pipe to its end, then CHECK_DEVICE_STATE (what QEMU's vhost_save_backend_state does).
    pub fn save_state(&mut self) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let (r, w) = pipe().map_err(err("pipe"))?;
        let ret = self
            .fe
            .set_device_state_fd(
                VhostTransferStateDirection::SAVE,
                VhostTransferStatePhase::STOPPED,
                w.into(),
            )
            .map_err(err("SET_DEVICE_STATE_FD(SAVE)"))?;
        let mut data = Vec::new();
        let mut r = ret.unwrap_or(r);
        r.read_to_end(&mut data).map_err(err("reading the state"))?;
        self.fe
            .check_device_state()
            .map_err(err("CHECK_DEVICE_STATE"))?;
        Ok(data)
    }

    /// Live migration, destination side: connect to `socket`, negotiate the features this
    /// driver had, give the same guest memory, load `state` (before or after the memory table),
    /// and restart the rings at `bases`. The device then serves this driver from the new daemon.
    pub fn resume_on(
        &mut self,
        socket: &Path,
        state: &[u8],
        bases: [u32; 2],
        state_before_memory: bool,
    ) -> Result<(), String> {
        self.reconnect_to(socket, Some(state), bases, state_before_memory)
    }

    /// A frontend reconnecting after its daemon went away (QEMU's `reconnect` chardev option):
    /// connect to `socket`, negotiate the features this driver had, give the same guest memory
    /// and restart the rings where the driver is (`bases`, QEMU takes the used index).
    pub fn reconnect(&mut self, socket: &Path, bases: [u32; 2]) -> Result<(), String> {
        self.reconnect_to(socket, None, bases, false)
    }

    /// The queue positions a frontend restarts the rings at when its daemon died (it cannot ask
    /// it): every request answered, so the used index.
    pub fn ring_positions(&self) -> [u32; 2] {
        [
            u32::from(self.reqq.used_idx(&self.mem)),
            u32::from(self.evq.used_idx(&self.mem)),
        ]
    }

    fn reconnect_to(
        &mut self,
        socket: &Path,
        state: Option<&[u8]>,
        bases: [u32; 2],
        state_before_memory: bool,
    ) -> Result<(), String> {
        let mut fe = Frontend::connect(socket, 2).map_err(err("connect"))?;
        fe.set_owner().map_err(err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(err("GET_FEATURES"))?;
        if offered & self.acked != self.acked {
            return Err(format!(
                "destination offers {offered:#x}, the driver acked {:#x}",
                self.acked
            ));
        }
        fe.set_features(self.acked).map_err(err("SET_FEATURES"))?;
        let proto = fe
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        fe.set_protocol_features(
            proto
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::DEVICE_STATE),
        )
        .map_err(err("SET_PROTOCOL_FEATURES"))?;
        let load = |fe: &mut Frontend| -> Result<(), String> {
            use std::io::Write;
            let Some(state) = state else {
                return Ok(());
            };
            let (r, w) = pipe().map_err(err("pipe"))?;
            let ret = fe
                .set_device_state_fd(
                    VhostTransferStateDirection::LOAD,
                    VhostTransferStatePhase::STOPPED,
                    r.into(),
                )
                .map_err(err("SET_DEVICE_STATE_FD(LOAD)"))?;
            let mut w = ret.unwrap_or(w);
            // The daemon may refuse a stream before reading all of it: a short write is then
            // the daemon's answer, and CHECK_DEVICE_STATE says why.
            let _ = w.write_all(state);
            drop(w);
            fe.check_device_state().map_err(err("CHECK_DEVICE_STATE"))
        };
        if state_before_memory {
            load(&mut fe)?;
        }
        fe.set_mem_table(&self.mem.region_infos())
            .map_err(err("SET_MEM_TABLE"))?;
        if !state_before_memory {
            load(&mut fe)?;
        }
        self.fe = fe;
        self.start_rings(bases)?;
        self.fe
            .get_features()
            .map_err(err("GET_FEATURES (barrier)"))?;
        Ok(())
    }

    /// GET_CONFIG of the whole 40-byte config space.
    pub fn config_bytes(&mut self) -> Vec<u8> {
        let (_, payload) = self
            .fe
            .get_config(
                0,
                CONFIG_LEN as u32,
                VhostUserConfigFlags::WRITABLE,
                &[0u8; CONFIG_LEN],
            )
            .expect("GET_CONFIG");
        payload
    }

    /// GET_CONFIG, decoded.
    pub fn config(&mut self) -> Config {
        Config::parse(&self.config_bytes())
    }

    /// SET_CONFIG of `bypass` (offset 36).
    pub fn set_bypass(&mut self, v: u8) {
        self.fe
            .set_config(
                proto::CONFIG_BYPASS_OFFSET,
                VhostUserConfigFlags::WRITABLE,
                &[v],
            )
            .expect("SET_CONFIG bypass");
    }

    /// Allocate a buffer in `buf_region`.
    pub fn alloc(&self, len: usize) -> u64 {
        self.mem.alloc_in(self.buf_region, len as u64, 16)
    }

    /// Put a request on the request queue (not published). The readable part is split into
    /// descriptors at `read_splits` (offsets), the writable part at `write_splits`.
    pub fn submit_split(
        &mut self,
        r: &Request,
        read_splits: &[usize],
        write_splits: &[usize],
    ) -> u16 {
        let rgpa = self.alloc(r.readable.len().max(1));
        self.mem.write(rgpa, &r.readable);
        let wgpa = self.alloc(r.writable_len + GUARD_LEN);
        self.mem.fill(wgpa, r.writable_len, SENTINEL);
        let guard = wgpa + r.writable_len as u64;
        self.mem.fill(guard, GUARD_LEN, GUARD);
        let mut bufs = Vec::new();
        let mut cut = |gpa: u64, len: usize, splits: &[usize], w: bool| {
            let mut prev = 0;
            for &s in splits.iter().chain(std::iter::once(&len)) {
                assert!(s >= prev && s <= len, "bad split {s}");
                if s > prev || (len == 0 && s == 0) {
                    bufs.push((gpa + prev as u64, (s - prev) as u32, w));
                }
                prev = s;
            }
        };
        if !r.readable.is_empty() {
            cut(rgpa, r.readable.len(), read_splits, false);
        }
        if r.writable_len > 0 {
            cut(wgpa, r.writable_len, write_splits, true);
        }
        let head = self.reqq.add_chain(&self.mem, &bufs);
        self.pending.insert(
            head,
            Pending {
                writable: (wgpa, r.writable_len),
                readable: Some((rgpa, r.readable.clone())),
                guard: Some(guard),
            },
        );
        head
    }

    /// Put a request on the request queue as one readable and one writable descriptor.
    pub fn submit(&mut self, r: &Request) -> u16 {
        self.submit_split(r, &[], &[])
    }

    /// Register a hand-built chain whose writable area (for reporting) is `(gpa, len)`.
    pub fn submit_raw(&mut self, head: u16, owned: Vec<u16>, writable: (u64, usize)) {
        self.reqq.push_head(&self.mem, head, owned);
        self.pending.insert(
            head,
            Pending {
                writable,
                readable: None,
                guard: None,
            },
        );
    }

    /// Publish and kick the request queue.
    pub fn kick(&mut self) {
        self.reqq.publish_and_kick(&self.mem);
    }

    fn response(&mut self, u: Used) -> Response {
        let head = u16::try_from(u.id).expect("head fits u16");
        let p = self
            .pending
            .remove(&head)
            .unwrap_or_else(|| panic!("unknown head {head}"));
        let (gpa, len) = p.writable;
        // virtio 1.x §2.7.4: a device MUST NOT write to a device-readable buffer.
        if let Some((rgpa, orig)) = &p.readable {
            assert_eq!(
                &self.mem.read(*rgpa, orig.len()),
                orig,
                "the device wrote into the device-readable part of request {head}"
            );
        }
        if let Some(g) = p.guard {
            assert!(
                self.mem.read(g, GUARD_LEN).iter().all(|&b| b == GUARD),
                "the device wrote past the end of request {head}'s writable buffer"
            );
        }
        let writable = if len > 0 && self.mem.contains(gpa, len as u64) {
            self.mem.read(gpa, len)
        } else {
            Vec::new()
        };
        Response {
            head,
            used_len: u.len,
            writable,
        }
    }

    /// Wait (bounded) for the next completed request.
    pub fn wait_response(&mut self, timeout: Duration) -> Option<Response> {
        let u = self.reqq.wait_used(&self.mem, timeout)?;
        Some(self.response(u))
    }

    /// Wait for `n` completions, in used-ring order. Panics on timeout.
    pub fn wait_responses(&mut self, n: usize) -> Vec<Response> {
        let timeout = DEFAULT_TIMEOUT + Duration::from_millis(20 * n as u64);
        let used = self.reqq.wait_used_n(&self.mem, n, timeout);
        assert_eq!(
            used.len(),
            n,
            "only {} of {n} requests completed within {timeout:?}",
            used.len()
        );
        used.into_iter().map(|u| self.response(u)).collect()
    }

    /// Submit one request, kick, and wait for it.
    pub fn run(&mut self, r: &Request) -> Response {
        self.run_timeout(r, DEFAULT_TIMEOUT)
    }

    /// Submit one request, kick, and wait up to `timeout` for it.
    pub fn run_timeout(&mut self, r: &Request, timeout: Duration) -> Response {
        let head = self.submit(r);
        self.kick();
        let resp = self
            .wait_response(timeout)
            .unwrap_or_else(|| panic!("request {:?} not completed in time", r.readable.first()));
        assert_eq!(resp.head, head, "used id is not the head we submitted");
        resp
    }

    /// Submit `reqs` in one kick; responses in submission order (checking every head came back
    /// exactly once).
    pub fn run_batch(&mut self, reqs: &[Request]) -> Vec<Response> {
        let heads: Vec<u16> = reqs.iter().map(|r| self.submit(r)).collect();
        self.kick();
        let mut got = self.wait_responses(reqs.len());
        let mut out = Vec::with_capacity(reqs.len());
        for h in heads {
            let i = got
                .iter()
                .position(|r| r.head == h)
                .unwrap_or_else(|| panic!("head {h} never came back"));
            out.push(got.swap_remove(i));
        }
        out
    }

    /// Run a request and return its status (asserting a non-zero used length).
    pub fn status_of(&mut self, r: &Request) -> u8 {
        let resp = self.run(r);
        assert!(resp.used_len > 0, "used length 0 for a well-formed request");
        resp.status()
    }

    /// ATTACH and return the status.
    pub fn attach(&mut self, domain: u32, endpoint: u32) -> u8 {
        self.status_of(&Request::attach(domain, endpoint, 0))
    }

    /// DETACH and return the status.
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> u8 {
        self.status_of(&Request::detach(domain, endpoint))
    }

    /// MAP and return the status.
    pub fn map(&mut self, domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> u8 {
        self.status_of(&Request::map(domain, start, end, phys, flags))
    }

    /// UNMAP and return the status.
    pub fn unmap(&mut self, domain: u32, start: u64, end: u64) -> u8 {
        self.status_of(&Request::unmap(domain, start, end))
    }

    /// Post `n` write-only event buffers of `len` bytes on the eventq (published and kicked).
    pub fn post_event_buffers(&mut self, n: usize, len: usize) {
        for _ in 0..n {
            let gpa = self.alloc(len);
            self.mem.fill(gpa, len, SENTINEL);
            let head = self.evq.add_chain(&self.mem, &[(gpa, len as u32, true)]);
            self.event_bufs.insert(head, gpa);
        }
        self.evq.publish_and_kick(&self.mem);
    }

    /// Wait (bounded) for the next event record; returns (used_len, the first `len` bytes of
    /// the buffer).
    pub fn wait_event_raw(&mut self, timeout: Duration, len: usize) -> Option<(u32, Vec<u8>)> {
        let u = self.evq.wait_used(&self.mem, timeout)?;
        let head = u16::try_from(u.id).expect("head fits u16");
        let gpa = self
            .event_bufs
            .remove(&head)
            .unwrap_or_else(|| panic!("eventq returned unknown head {head}"));
        Some((u.len, self.mem.read(gpa, len)))
    }

    /// Wait (bounded) for the next fault record on the eventq; returns (used_len, record).
    pub fn wait_fault(&mut self, timeout: Duration) -> Option<(u32, FaultRecord)> {
        let u = self.evq.wait_used(&self.mem, timeout)?;
        let head = u16::try_from(u.id).expect("head fits u16");
        let gpa = self
            .event_bufs
            .remove(&head)
            .unwrap_or_else(|| panic!("eventq returned unknown head {head}"));
        let bytes = self.mem.read(gpa, FAULT_RECORD_LEN);
        Some((u.len, FaultRecord::parse(&bytes)))
    }
}
