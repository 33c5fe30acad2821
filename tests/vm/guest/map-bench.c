/*
 * Guest program: run the kernel's DMA map benchmark (CONFIG_DMA_MAP_BENCHMARK) on the device
 * currently bound to the dma_map_benchmark driver.
 *
 * usage: map-bench SECONDS GRANULE
 * Prints "VUI-BENCH map_100ns=A map_stddev=B unmap_100ns=C unmap_stddev=D seconds=S granule=G"
 * (latencies in units of 100 ns, as the uAPI reports them) and a VUI-RESULT line.
 * The struct is declared here after include/uapi/linux/map_benchmark.h (136 bytes).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct map_benchmark {
	uint64_t avg_map_100ns;
	uint64_t map_stddev;
	uint64_t avg_unmap_100ns;
	uint64_t unmap_stddev;
	uint32_t threads;
	uint32_t seconds;
	int32_t node;
	uint32_t dma_bits;
	uint32_t dma_dir;
	uint32_t dma_trans_ns;
	uint32_t granule;
	uint8_t expansion[76];
};
_Static_assert(sizeof(struct map_benchmark) == 136, "uAPI size");

#define DMA_MAP_BENCHMARK _IOWR('d', 1, struct map_benchmark)

int main(int argc, char **argv)
{
	struct map_benchmark b;
	int fd;

	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: %s SECONDS GRANULE [THREADS]\n", argv[0]);
		return 2;
	}
	memset(&b, 0, sizeof(b));
	b.threads = argc == 4 ? (uint32_t)atoi(argv[3]) : 1;
	b.seconds = (uint32_t)atoi(argv[1]);
	b.granule = (uint32_t)atoi(argv[2]);
	b.node = -1;
	b.dma_bits = 32;
	b.dma_dir = 0; /* bidirectional */
	fd = open("/sys/kernel/debug/dma_map_benchmark", O_RDWR);
	if (fd < 0) {
		printf("VUI-RESULT map-bench FAIL open /sys/kernel/debug/dma_map_benchmark: %s\n",
		       strerror(errno));
		return 1;
	}
	if (ioctl(fd, DMA_MAP_BENCHMARK, &b)) {
		printf("VUI-RESULT map-bench FAIL DMA_MAP_BENCHMARK: %s\n", strerror(errno));
		return 1;
	}
	printf("VUI-BENCH map_100ns=%" PRIu64 " map_stddev=%" PRIu64 " unmap_100ns=%" PRIu64
	       " unmap_stddev=%" PRIu64 " seconds=%u granule=%u\n",
	       b.avg_map_100ns, b.map_stddev, b.avg_unmap_100ns, b.unmap_stddev, b.seconds, b.granule);
	printf("VUI-RESULT map-bench %s map %.1f us, unmap %.1f us (%u s, granule %u)\n",
	       b.avg_map_100ns ? "PASS" : "FAIL", b.avg_map_100ns / 10.0, b.avg_unmap_100ns / 10.0,
	       b.seconds, b.granule);
	return b.avg_map_100ns ? 0 : 1;
}
