/*
 * Guest program: map and unmap DMA buffers for a PCI function bound to vfio-pci, through the
 * VFIO device cdev + iommufd, so that every map/unmap becomes a virtio-iommu MAP/UNMAP request.
 *
 * usage: vfio-dma BDF OUTDIR [hold]
 * With "hold" it stops after the "mapped" step and keeps the mappings until it is killed (or
 * the guest reboots under it).
 * Writes OUTDIR/vfio-ranges.txt (the IOAS's allowed IOVA ranges after attach: "start last") and
 * OUTDIR/vfio-expected.txt (one line per 4 KiB page while mapped: "iova phys r w", phys from
 * /proc/self/pagemap). Between steps it prints "VUI-SYNC <name>" and waits (bounded) for
 * OUTDIR/ack-<name>: attached, mapped, unmapped. Prints VUI-RESULT lines for its own checks.
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
#include <sys/stat.h>
#include <unistd.h>

#define IOMMUFD_TYPE ';'
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, 0x84)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(IOMMUFD_TYPE, 118)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(IOMMUFD_TYPE, 119)

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

	if (argc != 3 && !(argc == 4 && strcmp(argv[3], "hold") == 0)) {
		fprintf(stderr, "usage: %s BDF OUTDIR [hold]\n", argv[0]);
		return 2;
	}
	outdir = argv[2];
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
	if (argc == 4)
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
