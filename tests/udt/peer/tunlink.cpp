// tunlink: an impaired IP link between two TUN devices (this kernel has no netem).
//
//   tunlink IF_A IF_B [--delay SECONDS] [--loss P] [--back-delay SECONDS] [--back-loss P]
//                     [--limit PACKETS] [--seed N]
//
// Creates TUN devices IF_A and IF_B (no packet info header), prints "ready" on stdout,
// then forwards every IP packet read from one to the other: from A to B after DELAY
// seconds, dropping each with probability P (Bernoulli, a seeded xorshift); from B to A
// after --back-delay with --back-loss (both 0 by default: like netem on one interface's
// egress). At most LIMIT packets wait per direction (netem's default limit is 1000; more
// are dropped). Move the
// devices into network namespaces after "ready": the file descriptors follow them.
// On SIGTERM or SIGINT it prints {"a_to_b": {...}, "b_to_a": {...}} counts on stderr.

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

volatile sig_atomic_t stop = 0;
void on_signal(int) { stop = 1; }

double now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int open_tun(const char* name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) {
        perror("tunlink: /dev/net/tun");
        std::exit(2);
    }
    ifreq ifr{};
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    std::strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        perror("tunlink: TUNSETIFF");
        std::exit(2);
    }
    return fd;
}

struct Slot {
    double due;
    int len;
    char data[2048];
};

struct Direction {
    int in, out;
    std::vector<Slot> ring;
    size_t head = 0, count = 0;
    unsigned long long forwarded = 0, lost = 0, overflow = 0;
    Direction(int i, int o, size_t limit) : in(i), out(o), ring(limit) {}
};

uint64_t rng_state = 88172645463325252ULL;
double uniform() {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (rng_state >> 11) * (1.0 / 9007199254740992.0);
}

void take(Direction& d, double delay, double loss) {
    char buf[2048];
    for (;;) {
        ssize_t n = read(d.in, buf, sizeof buf);
        if (n <= 0) return;
        if (uniform() < loss) {
            ++d.lost;
            continue;
        }
        if (d.count == d.ring.size()) {
            ++d.overflow;
            continue;
        }
        Slot& s = d.ring[(d.head + d.count) % d.ring.size()];
        s.due = now() + delay;
        s.len = int(n);
        std::memcpy(s.data, buf, size_t(n));
        ++d.count;
    }
}

void deliver(Direction& d, double t) {
    while (d.count) {
        Slot& s = d.ring[d.head];
        if (s.due > t) return;
        if (write(d.out, s.data, size_t(s.len)) >= 0) ++d.forwarded;
        d.head = (d.head + 1) % d.ring.size();
        --d.count;
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: tunlink IF_A IF_B [--delay S] [--loss P] [--limit N] [--seed N]\n");
        return 64;
    }
    double delay = 0.05, loss = 0.0, back_delay = 0.0, back_loss = 0.0;
    size_t limit = 1000;
    for (int i = 3; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--delay") delay = std::atof(argv[i + 1]);
        else if (a == "--loss") loss = std::atof(argv[i + 1]);
        else if (a == "--back-delay") back_delay = std::atof(argv[i + 1]);
        else if (a == "--back-loss") back_loss = std::atof(argv[i + 1]);
        else if (a == "--limit") limit = size_t(std::atol(argv[i + 1]));
        else if (a == "--seed") rng_state ^= uint64_t(std::atoll(argv[i + 1])) * 0x9E3779B97F4A7C15ULL;
        else {
            std::fprintf(stderr, "tunlink: unknown option %s\n", a.c_str());
            return 64;
        }
    }
    int fa = open_tun(argv[1]), fb = open_tun(argv[2]);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    Direction ab(fa, fb, limit), ba(fb, fa, limit);
    std::printf("ready\n");
    std::fflush(stdout);
    pollfd fds[2] = {{fa, POLLIN, 0}, {fb, POLLIN, 0}};
    while (!stop) {
        double t = now();
        deliver(ab, t);
        deliver(ba, t);
        double next = 1.0;
        if (ab.count) next = std::min(next, ab.ring[ab.head].due - t);
        if (ba.count) next = std::min(next, ba.ring[ba.head].due - t);
        if (next < 0) next = 0;
        timespec ts{time_t(next), long((next - time_t(next)) * 1e9)};
        int r = ppoll(fds, 2, &ts, nullptr);
        if (r < 0 && errno != EINTR) break;
        if (r > 0) {
            if (fds[0].revents & POLLIN) take(ab, delay, loss);
            if (fds[1].revents & POLLIN) take(ba, back_delay, back_loss);
        }
    }
    std::fprintf(stderr,
                 "{\"a_to_b\": {\"forwarded\": %llu, \"lost\": %llu, \"overflow\": %llu}, "
                 "\"b_to_a\": {\"forwarded\": %llu, \"lost\": %llu, \"overflow\": %llu}}\n",
                 ab.forwarded, ab.lost, ab.overflow, ba.forwarded, ba.lost, ba.overflow);
    return 0;
}
