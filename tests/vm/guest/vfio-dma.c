/*
 * Guest program: map and unmap DMA buffers for a PCI function bound to vfio-pci, through the
 * VFIO device cdev + iommufd, so that every map/unmap becomes a virtio-iommu MAP/UNMAP request.
 *
 * usage: vfio-dma BDF OUTDIR [hold|edu|edu-hold|edu-loop|bind|bypass]
 *        vfio-dma PID OUTFILE census
 * With "hold" it stops after the "mapped" step and keeps the mappings until it is killed (or
 * the guest reboots under it). With "edu" (the device must be QEMU's edu) it proves each step
 * with edu's DMA engine instead (see edu_steps). With "bind" it only binds the device to a new
 * iommufd and attaches it to a new IOAS (the device is free), then exits. With "bypass" (edu
 * on no driver, its IOMMU group's domain identity) it drives edu through sysfs (resource0,
 * config) and proves that a guest-physical address reaches that page (see edu_bypass).
 * Writes OUTDIR/vfio-ranges.txt (the IOAS's allowed IOVA ranges after attach: "start last") and
 * OUTDIR/vfio-expected.txt (one line per 4 KiB page while mapped: "iova phys r w", phys from
 * /proc/self/pagemap). Between steps it prints "VUI-SYNC <name>" and waits (bounded) for
 * OUTDIR/ack-<name>: attached, mapped, unmapped. Prints VUI-RESULT lines for its own checks.
 * With "edu-loop", after the edu steps, it keeps edu's DMA going until told to stop (see
 * edu_loop). "census" lists the IOASes and paging HWPTs alive in the iommufd process PID holds
 * (its copy taken with pidfd_getfd) into OUTFILE.
 * The uAPI structs are declared here (the build host's headers predate the VFIO cdev).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#define IOMMUFD_TYPE ';'
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, 0x84)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#define IOMMU_HWPT_SET_DIRTY_TRACKING _IO(IOMMUFD_TYPE, 0x8b)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(IOMMUFD_TYPE, 118)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(IOMMUFD_TYPE, 119)
#define VFIO_DEVICE_GET_REGION_INFO _IO(IOMMUFD_TYPE, 100 + 8)
#define VFIO_PCI_CONFIG_REGION_INDEX 7

#define MAP_FIXED_IOVA (1u << 0)
#define MAP_WRITEABLE (1u << 1)
#define MAP_READABLE (1u << 2)

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iova_range { uint64_t start, last; };
struct ioas_iova_ranges {
	uint32_t size, ioas_id, num_iovas, reserved;
	uint64_t allowed_iovas, out_iova_alignment;
};
struct ioas_map {
	uint32_t size, flags, ioas_id, reserved;
	uint64_t user_va, length, iova;
};
struct ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct bind_iommufd { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach_pt { uint32_t argsz, flags, pt_id, pasid; };
struct region_info { uint32_t argsz, flags, index, cap_offset; uint64_t size, offset; };
struct hwpt_dirty { uint32_t size, flags, hwpt_id, reserved; };

#define PAGE 4096ul

struct buf {
	uint64_t iova;
	size_t pages;
	uint32_t flags;
	uint8_t *va;
};

/* IOVAs inside a 32-bit input range (the daemon may be configured with a small one). */
static struct buf bufs[] = {
	{ 0x00100000, 4, MAP_READABLE | MAP_WRITEABLE, NULL },
	{ 0x00200000, 1, MAP_READABLE, NULL },
	{ 0x00400000, 1, MAP_WRITEABLE, NULL },
	{ 0x01000000, 16, MAP_READABLE | MAP_WRITEABLE, NULL },
};
#define NBUFS (sizeof(bufs) / sizeof(bufs[0]))

static const char *outdir;
static int failures;

static void result(const char *name, int ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
#include <stdarg.h>
static void result(const char *name, int ok, const char *fmt, ...)
{
	va_list ap;
	printf("VUI-RESULT %s %s ", name, ok ? "PASS" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!ok)
		failures++;
}

static int sync_host(const char *name)
{
	char path[512];
	int i;

	snprintf(path, sizeof(path), "%s/ack-%s", outdir, name);
	printf("VUI-SYNC %s\n", name);
	fflush(stdout);
	for (i = 0; i < 600; i++) {
		if (access(path, F_OK) == 0)
			return 0;
		usleep(100000);
	}
	result(name, 0, "no ack from the host within 60 s");
	return -1;
}

static int find_cdev(const char *bdf, char *out, size_t len)
{
	char dir[256], line[64];
	FILE *f;
	int n;

	/* /sys/bus/pci/devices/BDF/vfio-dev/vfioN/dev holds "major:minor"; /dev/vfio/devices/vfioN */
	for (n = 0; n < 64; n++) {
		snprintf(dir, sizeof(dir), "/sys/bus/pci/devices/%s/vfio-dev/vfio%d/dev", bdf, n);
		f = fopen(dir, "r");
		if (!f)
			continue;
		if (!fgets(line, sizeof(line), f))
			line[0] = 0;
		fclose(f);
		snprintf(out, len, "/dev/vfio/devices/vfio%d", n);
		return 0;
	}
	return -1;
}

static uint64_t phys_of(int pagemap, void *va)
{
	uint64_t e;
	off_t off = (off_t)((uintptr_t)va / PAGE) * 8;

	if (pread(pagemap, &e, sizeof(e), off) != sizeof(e))
		return 0;
	if (!(e & (1ull << 63)))
		return 0;
	return (e & ((1ull << 55) - 1)) * PAGE;
}

/*
 * edu (QEMU hw/misc/edu.c): DMA registers in BAR0, a 4 KiB buffer at device address 0x40000,
 * DMA addresses below 2^28. Accessed through the VFIO device fd (region offsets).
 */
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_BUF 0x40000ull
#define EDU_CMD_START 1ull
#define EDU_CMD_TO_RAM 2ull
#define EDU_IOVA 0x100000ull
#define EDU_NEVER_MAPPED 0x300000ull

static int edu_fd;
static uint64_t edu_bar0;

static uint64_t region_offset(int dev, uint32_t index)
{
	struct region_info r = { sizeof(r), 0, index, 0, 0, 0 };

	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &r))
		return UINT64_MAX;
	return r.offset;
}

static int edu_w64(uint64_t reg, uint64_t v)
{
	return pwrite(edu_fd, &v, 8, (off_t)(edu_bar0 + reg)) == 8 ? 0 : -1;
}

static int edu_init(int dev)
{
	uint64_t cfg;
	uint16_t cmd;

	edu_fd = dev;
	edu_bar0 = region_offset(dev, 0);
	cfg = region_offset(dev, VFIO_PCI_CONFIG_REGION_INDEX);
	if (edu_bar0 == UINT64_MAX || cfg == UINT64_MAX)
		return -1;
	/* PCI_COMMAND: memory space and bus master on. */
	if (pread(dev, &cmd, 2, (off_t)(cfg + 4)) != 2)
		return -1;
	cmd |= 0x2 | 0x4;
	return pwrite(dev, &cmd, 2, (off_t)(cfg + 4)) == 2 ? 0 : -1;
}

/* One DMA transfer; waits (at most 10 s) for the device to finish it. */
static int edu_dma(uint64_t src, uint64_t dst, uint64_t len, int to_ram)
{
	uint64_t c = 0;
	int i;

	if (edu_w64(EDU_DMA_SRC, src) || edu_w64(EDU_DMA_DST, dst) || edu_w64(EDU_DMA_CNT, len) ||
	    edu_w64(EDU_DMA_CMD, EDU_CMD_START | (to_ram ? EDU_CMD_TO_RAM : 0)))
		return -1;
	for (i = 0; i < 500; i++) {
		if (pread(edu_fd, &c, 8, (off_t)(edu_bar0 + EDU_DMA_CMD)) != 8)
			return -1;
		if (!(c & EDU_CMD_START))
			return 0;
		usleep(20000);
	}
	return -1;
}

static uint8_t *two_pages(uint8_t fill0, uint8_t fill1)
{
	uint8_t *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	size_t i;

	if (p == MAP_FAILED)
		return NULL;
	for (i = 0; i < PAGE; i++)
		p[i] = (uint8_t)(fill0 ^ i);
	memset(p + PAGE, fill1, PAGE);
	return p;
}

static int all(const uint8_t *p, uint8_t b)
{
	size_t i;

	for (i = 0; i < PAGE; i++)
		if (((volatile const uint8_t *)p)[i] != b)
			return 0;
	return 1;
}

static int same_as_pattern(const uint8_t *p, uint8_t fill0)
{
	size_t i;

	for (i = 0; i < PAGE; i++)
		if (((volatile const uint8_t *)p)[i] != (uint8_t)(fill0 ^ i))
			return 0;
	return 1;
}

static int ioas_map(int iommufd, uint32_t ioas, void *va, uint64_t iova, uint64_t len)
{
	struct ioas_map m = { sizeof(m), MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, ioas, 0,
			      (uintptr_t)va, len, iova };

	return ioctl(iommufd, IOMMU_IOAS_MAP, &m);
}

/*
 * edu's DMA engine proves each step: page 0 of a buffer is read through EDU_IOVA into edu's
 * buffer, edu's buffer is written through EDU_IOVA + 4K (page 1). Steps, each followed by a
 * VUI-SYNC so the other side can check the IOMMU's state:
 *   blocked    bound, not attached: edu's DMA reaches nothing
 *   mapped     attached to IOAS 1, buffer A mapped at EDU_IOVA: page 1 becomes page 0's
 *              pattern; a write through an IOVA never mapped changes nothing in A
 *   unmapped   after UNMAP: a write through EDU_IOVA + 4K changes nothing
 *   replaced   IOAS 2 maps buffer B at EDU_IOVA; ATTACH replaces: the same IOVA reaches B
 * "hold" after the last step keeps everything until the program is killed.
 */
static int edu_loop(int iommufd, uint32_t ioas, uint8_t *held);

static int edu_steps(int dev, int iommufd, int hold)
{
	struct ioas_alloc a1 = { sizeof(a1), 0, 0 }, a2 = { sizeof(a2), 0, 0 };
	struct attach_pt at = { sizeof(at), 0, 0, 0 };
	struct ioas_unmap u = { sizeof(u), 0, EDU_IOVA, 2 * PAGE };
	uint8_t *A, *B;
	int r;

	if (edu_init(dev)) {
		result("edu-init", 0, "BAR0/config region or PCI_COMMAND: %s", strerror(errno));
		return 1;
	}
	A = two_pages(0xa5, 0x11);
	B = two_pages(0x3c, 0x44);
	if (!A || !B) {
		result("edu-buffers", 0, "mmap: %s", strerror(errno));
		return 1;
	}

	r = edu_dma(EDU_BUF, EDU_IOVA + PAGE, PAGE, 1);
	result("edu-blocked", r == 0 && all(A + PAGE, 0x11) && all(B + PAGE, 0x44),
	       "bound, not attached: edu's write through %#llx reached no buffer (dma %d)",
	       EDU_IOVA + PAGE, r);
	if (sync_host("blocked"))
		return 1;

	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &a1) || ioctl(iommufd, IOMMU_IOAS_ALLOC, &a2)) {
		result("edu-ioas", 0, "IOMMU_IOAS_ALLOC: %s", strerror(errno));
		return 1;
	}
	at.pt_id = a1.out_ioas_id;
	if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) ||
	    ioas_map(iommufd, a1.out_ioas_id, A, EDU_IOVA, 2 * PAGE)) {
		result("edu-attach-map", 0, "ATTACH to IOAS %u / MAP: %s", a1.out_ioas_id,
		       strerror(errno));
		return 1;
	}
	r = edu_dma(EDU_IOVA, EDU_BUF, PAGE, 0);
	if (!r)
		r = edu_dma(EDU_BUF, EDU_IOVA + PAGE, PAGE, 1);
	result("edu-dma-through-iova", r == 0 && same_as_pattern(A + PAGE, 0xa5),
	       "edu read IOVA %#llx (page 0 of A) and wrote IOVA %#llx: page 1 of A %s (dma %d)",
	       EDU_IOVA, EDU_IOVA + PAGE,
	       same_as_pattern(A + PAGE, 0xa5) ? "holds page 0's data" : "unchanged", r);
	memset(A + PAGE, 0x22, PAGE);
	r = edu_dma(EDU_BUF, EDU_NEVER_MAPPED, PAGE, 1);
	result("edu-never-mapped", all(A + PAGE, 0x22) && same_as_pattern(A, 0xa5) &&
	       all(B + PAGE, 0x44), "a write through IOVA %#llx (never mapped) changed nothing (dma %d)",
	       EDU_NEVER_MAPPED, r);
	if (sync_host("mapped"))
		return 1;

	u.ioas_id = a1.out_ioas_id;
	if (ioctl(iommufd, IOMMU_IOAS_UNMAP, &u)) {
		result("edu-unmap", 0, "IOMMU_IOAS_UNMAP: %s", strerror(errno));
		return 1;
	}
	memset(A + PAGE, 0x33, PAGE);
	r = edu_dma(EDU_BUF, EDU_IOVA + PAGE, PAGE, 1);
	result("edu-nothing-after-unmap", all(A + PAGE, 0x33),
	       "after UNMAP edu's write through %#llx changed nothing (dma %d)", EDU_IOVA + PAGE, r);
	if (sync_host("unmapped"))
		return 1;

	if (ioas_map(iommufd, a2.out_ioas_id, B, EDU_IOVA, 2 * PAGE)) {
		result("edu-map-2", 0, "MAP in IOAS %u: %s", a2.out_ioas_id, strerror(errno));
		return 1;
	}
	at.pt_id = a2.out_ioas_id;
	if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)) {
		result("edu-replace", 0, "ATTACH to IOAS %u: %s", a2.out_ioas_id, strerror(errno));
		return 1;
	}
	r = edu_dma(EDU_BUF, EDU_IOVA + PAGE, PAGE, 1);
	result("edu-replace-reaches-new-page", r == 0 && same_as_pattern(B + PAGE, 0xa5) &&
	       all(A + PAGE, 0x33), "after ATTACH to IOAS %u the same IOVA reaches B, not A (dma %d)",
	       a2.out_ioas_id, r);
	if (sync_host("replaced"))
		return 1;
	if (hold == 2 && edu_loop(iommufd, a2.out_ioas_id, B))
		return 1;
	if (hold)
		for (;;)
			pause();
	return failures ? 1 : 0;
}

static long now_ms(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return tv.tv_sec * 1000L + tv.tv_usec / 1000;
}

/*
 * The DMA load of a restart: B (2 pages) stays mapped at EDU_IOVA in `ioas`, edu's domain.
 * Writes OUTDIR/edu-expected.txt (B's pages as vfio-expected.txt has them), prints
 * "VUI-SYNC restarts" and, until OUTDIR/ack-restarts exists (at most 1500 s), repeats rounds:
 *   1. edu reads a new pattern through EDU_IOVA (B page 0, the held mapping) and writes it
 *      through EDU_IOVA + 4K: B page 1 must hold it;
 *   2. C is mapped at EDU_LOOP_IOVA (a MAP request), edu writes the pattern there: C must
 *      hold it; C is unmapped (an UNMAP request) and cleared, edu writes 8 bytes again: C
 *      must stay clear (the UNMAP reached the host IOMMU).
 * Each round's MAP and UNMAP wait while no daemon serves; a round fails only on wrong data or
 * a failed ioctl. Then a VUI-RESULT with the rounds, failures and the longest round, and a
 * "loop-done" sync with B still mapped.
 */
#define EDU_LOOP_IOVA 0x800000ull
static int edu_loop(int iommufd, uint32_t ioas, uint8_t *held)
{
	struct ioas_unmap u = { sizeof(u), ioas, EDU_LOOP_IOVA, PAGE };
	char path[512], first[256] = "";
	long rounds = 0, bad = 0, longest = 0, t0, t, i;
	int pagemap, r, ok;
	uint8_t *C;
	FILE *f;

	pagemap = open("/proc/self/pagemap", O_RDONLY);
	snprintf(path, sizeof(path), "%s/edu-expected.txt", outdir);
	f = fopen(path, "w");
	C = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		 -1, 0);
	if (pagemap < 0 || !f || C == MAP_FAILED) {
		result("edu-loop-setup", 0, "pagemap, %s or mmap: %s", path, strerror(errno));
		return 1;
	}
	for (i = 0; i < 2; i++)
		fprintf(f, "%#llx %#" PRIx64 " 1 1\n", EDU_IOVA + i * PAGE,
			phys_of(pagemap, held + i * PAGE));
	fclose(f);
	snprintf(path, sizeof(path), "%s/ack-restarts", outdir);
	printf("VUI-SYNC restarts\n");
	fflush(stdout);
	t0 = now_ms();
	while (access(path, F_OK) != 0 && now_ms() - t0 < 1500 * 1000L) {
		uint8_t seed = (uint8_t)(rounds * 7 + 1);

		t = now_ms();
		ok = 1;
		for (i = 0; i < (long)PAGE; i++)
			held[i] = (uint8_t)(seed ^ i);
		memset(held + PAGE, 0, PAGE);
		r = edu_dma(EDU_IOVA, EDU_BUF, PAGE, 0);
		if (!r)
			r = edu_dma(EDU_BUF, EDU_IOVA + PAGE, PAGE, 1);
		if (r || !same_as_pattern(held + PAGE, seed)) {
			ok = 0;
			if (!first[0])
				snprintf(first, sizeof(first), "round %ld: held mapping (dma %d)", rounds, r);
		}
		memset(C, 0, PAGE);
		if (ioas_map(iommufd, ioas, C, EDU_LOOP_IOVA, PAGE)) {
			ok = 0;
			if (!first[0])
				snprintf(first, sizeof(first), "round %ld: MAP: %s", rounds, strerror(errno));
		} else {
			r = edu_dma(EDU_BUF, EDU_LOOP_IOVA, PAGE, 1);
			if (r || !same_as_pattern(C, seed)) {
				ok = 0;
				if (!first[0])
					snprintf(first, sizeof(first), "round %ld: mapped C (dma %d)", rounds, r);
			}
			if (ioctl(iommufd, IOMMU_IOAS_UNMAP, &u)) {
				ok = 0;
				if (!first[0])
					snprintf(first, sizeof(first), "round %ld: UNMAP: %s", rounds,
						 strerror(errno));
			}
			memset(C, 0, PAGE);
			u.length = PAGE;
			/* 8 bytes: each faulting word is a fault record in the test VM's log. */
			edu_dma(EDU_BUF, EDU_LOOP_IOVA, 8, 1);
			if (!all(C, 0)) {
				ok = 0;
				if (!first[0])
					snprintf(first, sizeof(first), "round %ld: write after UNMAP landed",
						 rounds);
			}
		}
		rounds++;
		bad += !ok;
		t = now_ms() - t;
		if (t > longest)
			longest = t;
		if (rounds % 20 == 0) {
			printf("VUI-NOTE edu-loop: %ld rounds, %ld failed, longest %ld ms\n", rounds, bad,
			       longest);
			fflush(stdout);
		}
	}
	result("edu-dma-loop", rounds > 0 && bad == 0 && access(path, F_OK) == 0,
	       "%ld rounds of edu DMA (held mapping + MAP/DMA/UNMAP/DMA) in %ld s, %ld failed%s%s; longest round %ld ms",
	       rounds, (now_ms() - t0) / 1000, bad, first[0] ? ", first: " : "", first, longest);
	return sync_host("loop-done");
}

/*
 * The IOASes (IOAS_IOVA_RANGES answers, ENOENT otherwise) and paging HWPTs
 * (HWPT_SET_DIRTY_TRACKING(off) answers ENOENT for anything else) with ids 1-1023 in the iommufd
 * that process `pid` holds, taken with pidfd_getfd; one line to `out`: "ioas ID... hwpt ID...".
 */
static int census(const char *pid, const char *out)
{
	char path[300], link[64];
	struct dirent *e;
	int pidfd, fd = -1, n;
	uint32_t id;
	DIR *d;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%s/fd", pid);
	pidfd = (int)syscall(SYS_pidfd_open, atoi(pid), 0);
	d = opendir(path);
	while (d && pidfd >= 0 && fd < 0 && (e = readdir(d))) {
		char p[600];

		snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
		n = (int)readlink(p, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (strcmp(link, "/dev/iommu") == 0)
			fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
	}
	if (d)
		closedir(d);
	f = fopen(out, "w");
	if (fd < 0 || !f) {
		fprintf(stderr, "census: no /dev/iommu fd of process %s, or %s: %s\n", pid, out,
			strerror(errno));
		return 1;
	}
	fprintf(f, "ioas");
	for (id = 1; id < 1024; id++) {
		struct ioas_iova_ranges rq = { sizeof(rq), id, 0, 0, 0, 0 };

		if (ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &rq) == 0 || errno != ENOENT)
			fprintf(f, " %u", id);
	}
	fprintf(f, " hwpt");
	for (id = 1; id < 1024; id++) {
		struct hwpt_dirty h = { sizeof(h), 0, id, 0 };

		if (ioctl(fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &h) == 0 || errno != ENOENT)
			fprintf(f, " %u", id);
	}
	fprintf(f, "\n");
	fclose(f);
	return 0;
}

/* pagemap: the physical address of a resident page of this process (0 if none). */
static uint64_t phys_of(int pagemap, void *va);

/*
 * Bypass: edu is on no driver and its group's domain is identity, so its DMA addresses are
 * guest-physical. edu is driven through sysfs (config for bus mastering, resource0 for BAR0):
 * page 0 of a buffer is read at its guest-physical address into edu's buffer and written to
 * page 1's guest-physical address. Then a VUI-SYNC, holding the buffer, until killed.
 */
static int edu_bypass(const char *bdf)
{
	char path[256];
	uint16_t cmd;
	uint64_t pa0, pa1;
	uint8_t *A, *bar;
	int cfg, res, pagemap, r, i;
	volatile uint64_t *regs;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/config", bdf);
	cfg = open(path, O_RDWR);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/resource0", bdf);
	res = open(path, O_RDWR | O_SYNC);
	pagemap = open("/proc/self/pagemap", O_RDONLY);
	if (cfg < 0 || res < 0 || pagemap < 0 || pread(cfg, &cmd, 2, 4) != 2) {
		result("bypass-sysfs", 0, "config/resource0/pagemap of %s: %s", bdf, strerror(errno));
		return 1;
	}
	cmd |= 0x2 | 0x4;
	bar = mmap(NULL, 0x100000, PROT_READ | PROT_WRITE, MAP_SHARED, res, 0);
	A = two_pages(0x5e, 0x66);
	if (pwrite(cfg, &cmd, 2, 4) != 2 || bar == MAP_FAILED || !A || mlock(A, 2 * PAGE)) {
		result("bypass-sysfs", 0, "bus master / mmap resource0 / buffer: %s", strerror(errno));
		return 1;
	}
	regs = (volatile uint64_t *)bar;
	pa0 = phys_of(pagemap, A);
	pa1 = phys_of(pagemap, A + PAGE);
	if (!pa0 || !pa1 || pa0 >= (1ull << 28) || pa1 >= (1ull << 28)) {
		result("bypass-buffer", 0, "buffer at %#" PRIx64 "/%#" PRIx64 " (edu reaches 28 bits)",
		       pa0, pa1);
		return 1;
	}
	r = 0;
	for (i = 0; i < 2 && !r; i++) {
		regs[EDU_DMA_SRC / 8] = i ? EDU_BUF : pa0;
		regs[EDU_DMA_DST / 8] = i ? pa1 : EDU_BUF;
		regs[EDU_DMA_CNT / 8] = PAGE;
		regs[EDU_DMA_CMD / 8] = EDU_CMD_START | (i ? EDU_CMD_TO_RAM : 0);
		for (r = 500; r > 0 && (regs[EDU_DMA_CMD / 8] & EDU_CMD_START); r--)
			usleep(20000);
		r = r ? 0 : -1;
	}
	result("edu-bypass-identity", r == 0 && same_as_pattern(A + PAGE, 0x5e),
	       "identity domain: edu read GPA %#" PRIx64 " and wrote GPA %#" PRIx64
	       ": page 1 %s (dma %d)", pa0, pa1,
	       same_as_pattern(A + PAGE, 0x5e) ? "holds page 0's data" : "unchanged", r);
	if (sync_host("bypass"))
		return 1;
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	char cdev[128], path[512];
	int dev, iommufd, pagemap;
	struct bind_iommufd bind = { sizeof(bind), 0, -1, 0 };
	struct ioas_alloc alloc = { sizeof(alloc), 0, 0 };
	struct attach_pt attach = { sizeof(attach), 0, 0, 0 };
	struct iova_range ranges[16];
	struct ioas_iova_ranges rq;
	FILE *f;
	size_t i, p;

	const char *mode = argc == 4 ? argv[3] : "";

	if (argc != 3 && !(argc == 4 && (strcmp(mode, "hold") == 0 || strcmp(mode, "edu") == 0 ||
					 strcmp(mode, "edu-hold") == 0 || strcmp(mode, "bind") == 0 ||
					 strcmp(mode, "edu-loop") == 0 || strcmp(mode, "census") == 0 ||
					 strcmp(mode, "bypass") == 0))) {
		fprintf(stderr, "usage: %s BDF OUTDIR [hold|edu|edu-hold|edu-loop|bind|bypass]\n"
			"       %s PID OUTFILE census\n", argv[0], argv[0]);
		return 2;
	}
	if (strcmp(mode, "census") == 0)
		return census(argv[1], argv[2]);
	outdir = argv[2];
	if (strcmp(mode, "bypass") == 0)
		return edu_bypass(argv[1]);
	if (find_cdev(argv[1], cdev, sizeof(cdev))) {
		result("vfio-cdev", 0, "%s has no vfio-dev/vfioN (not bound to vfio-pci?)", argv[1]);
		return 1;
	}
	dev = open(cdev, O_RDWR);
	iommufd = open("/dev/iommu", O_RDWR);
	if (dev < 0 || iommufd < 0) {
		result("vfio-open", 0, "open %s / /dev/iommu: %s", cdev, strerror(errno));
		return 1;
	}
	bind.iommufd = iommufd;
	if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind)) {
		result("vfio-bind", 0, "VFIO_DEVICE_BIND_IOMMUFD: %s", strerror(errno));
		return 1;
	}
	if (strncmp(mode, "edu", 3) == 0)
		return edu_steps(dev, iommufd, strcmp(mode, "edu-hold") == 0   ? 1
					       : strcmp(mode, "edu-loop") == 0 ? 2
									 : 0);
	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc)) {
		result("vfio-ioas", 0, "IOMMU_IOAS_ALLOC: %s", strerror(errno));
		return 1;
	}
	attach.pt_id = alloc.out_ioas_id;
	if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)) {
		result("vfio-attach", 0, "VFIO_DEVICE_ATTACH_IOMMUFD_PT: %s", strerror(errno));
		return 1;
	}
	result("vfio-attach", 1, "%s bound to iommufd (devid %u), attached to IOAS %u", cdev,
	       bind.out_devid, alloc.out_ioas_id);
	if (strcmp(mode, "bind") == 0)
		return 0;

	memset(&rq, 0, sizeof(rq));
	rq.size = sizeof(rq);
	rq.ioas_id = alloc.out_ioas_id;
	rq.num_iovas = 16;
	rq.allowed_iovas = (uintptr_t)ranges;
	if (ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &rq)) {
		result("vfio-iova-ranges", 0, "IOMMU_IOAS_IOVA_RANGES: %s", strerror(errno));
		return 1;
	}
	snprintf(path, sizeof(path), "%s/vfio-ranges.txt", outdir);
	f = fopen(path, "w");
	for (i = 0; f && i < rq.num_iovas && i < 16; i++)
		fprintf(f, "%#" PRIx64 " %#" PRIx64 "\n", ranges[i].start, ranges[i].last);
	if (f)
		fclose(f);
	result("vfio-iova-ranges", rq.num_iovas > 0, "%u allowed range(s), first %#" PRIx64 "-%#" PRIx64
	       ", alignment %#" PRIx64, rq.num_iovas, ranges[0].start, ranges[0].last,
	       (uint64_t)rq.out_iova_alignment);
	if (sync_host("attached"))
		return 1;

	pagemap = open("/proc/self/pagemap", O_RDONLY);
	snprintf(path, sizeof(path), "%s/vfio-expected.txt", outdir);
	f = fopen(path, "w");
	if (pagemap < 0 || !f) {
		result("vfio-map", 0, "cannot open pagemap or %s: %s", path, strerror(errno));
		return 1;
	}
	for (i = 0; i < NBUFS; i++) {
		struct ioas_map m = { sizeof(m), 0, 0, 0, 0, 0, 0 };

		bufs[i].va = mmap(NULL, bufs[i].pages * PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (bufs[i].va == MAP_FAILED) {
			result("vfio-map", 0, "mmap: %s", strerror(errno));
			return 1;
		}
		memset(bufs[i].va, 0x5a, bufs[i].pages * PAGE);
		m.flags = MAP_FIXED_IOVA | bufs[i].flags;
		m.ioas_id = alloc.out_ioas_id;
		m.user_va = (uintptr_t)bufs[i].va;
		m.length = bufs[i].pages * PAGE;
		m.iova = bufs[i].iova;
		if (ioctl(iommufd, IOMMU_IOAS_MAP, &m)) {
			result("vfio-map", 0, "IOMMU_IOAS_MAP iova %#" PRIx64 " len %#" PRIx64 ": %s",
			       m.iova, m.length, strerror(errno));
			return 1;
		}
		/* Pinned by the map: pagemap now gives the physical pages the IOMMU maps. */
		for (p = 0; p < bufs[i].pages; p++) {
			uint64_t pa = phys_of(pagemap, bufs[i].va + p * PAGE);

			if (!pa) {
				result("vfio-map", 0, "no pagemap entry for iova %#" PRIx64,
				       bufs[i].iova + p * PAGE);
				return 1;
			}
			fprintf(f, "%#" PRIx64 " %#" PRIx64 " %d %d\n", bufs[i].iova + p * PAGE, pa,
				!!(bufs[i].flags & MAP_READABLE), !!(bufs[i].flags & MAP_WRITEABLE));
		}
	}
	fclose(f);
	result("vfio-map", 1, "%zu buffers mapped through IOMMU_IOAS_MAP", NBUFS);
	if (sync_host("mapped"))
		return 1;
	if (strcmp(mode, "hold") == 0)
		for (;;)
			pause();

	for (i = 0; i < NBUFS; i++) {
		struct ioas_unmap u = { sizeof(u), alloc.out_ioas_id, bufs[i].iova,
					bufs[i].pages * PAGE };

		if (ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) || u.length != bufs[i].pages * PAGE) {
			result("vfio-unmap", 0, "IOMMU_IOAS_UNMAP iova %#" PRIx64 ": %s", bufs[i].iova,
			       strerror(errno));
			return 1;
		}
	}
	result("vfio-unmap", 1, "all buffers unmapped");
	if (sync_host("unmapped"))
		return 1;
	close(dev);
	close(iommufd);
	return failures ? 1 : 0;
}
