/*
 * blkzeroout DEV OFFSET LENGTH: issue the BLKZEROOUT ioctl on a block device
 * (the guest's virtio-blk driver turns it into WRITE_ZEROES when the device
 * offers it). OFFSET and LENGTH are bytes (decimal or 0x-hex) and must be
 * multiples of the logical block size. Built statically by test/guest/helpers.ts.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int parse_u64(const char *text, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long value = strtoull(text, &end, 0);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-') return -1;
  *out = value;
  return 0;
}

int main(int argc, char **argv) {
  uint64_t range[2];
  if (argc != 4 || parse_u64(argv[2], &range[0]) != 0 || parse_u64(argv[3], &range[1]) != 0) {
    fprintf(stderr, "usage: blkzeroout DEV OFFSET LENGTH\n");
    return 2;
  }
  int fd = open(argv[1], O_WRONLY);
  if (fd < 0) {
    fprintf(stderr, "blkzeroout: open %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  if (ioctl(fd, BLKZEROOUT, range) != 0) {
    fprintf(stderr, "blkzeroout: BLKZEROOUT %s: %s\n", argv[1], strerror(errno));
    close(fd);
    return 1;
  }
  close(fd);
  return 0;
}
