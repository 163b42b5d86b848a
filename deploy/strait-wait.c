// strait-wait PORT PATH SECONDS: polls http://127.0.0.1:PORT/PATH until it answers 200 (exit 0) or
// SECONDS pass (exit 1). The classic-sidecar postStart hook runs it in the sidecar image, which has no
// shell or curl; deploy/build-image.sh compiles it statically so it needs nothing else either.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int ready_once(int port, const char* path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct timeval tv = {1, 0};  // one probe never takes more than a second per step
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = 0;
  if (connect(fd, (struct sockaddr*)&sa, sizeof sa) == 0) {
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    char resp[64] = {0};
    if (n > 0 && n < (int)sizeof req && write(fd, req, (size_t)n) == n) {
      ssize_t got = read(fd, resp, sizeof resp - 1);
      // "HTTP/1.x 200 " is all that matters.
      ok = got >= 12 && strncmp(resp, "HTTP/1.", 7) == 0 && strncmp(resp + 9, "200", 3) == 0;
    }
  }
  close(fd);
  return ok;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: strait-wait PORT PATH SECONDS\n");
    return 2;
  }
  int port = atoi(argv[1]);
  int seconds = atoi(argv[3]);
  if (port < 1 || port > 65535 || seconds < 0 || argv[2][0] != '/') {
    fprintf(stderr, "strait-wait: bad PORT, PATH or SECONDS\n");
    return 2;
  }
  struct timespec start, now, pause = {0, 100 * 1000 * 1000};
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    if (ready_once(port, argv[2])) return 0;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec >= seconds) break;
    nanosleep(&pause, NULL);
  }
  fprintf(stderr, "strait-wait: 127.0.0.1:%d%s not ready after %d s\n", port, argv[2], seconds);
  return 1;
}
