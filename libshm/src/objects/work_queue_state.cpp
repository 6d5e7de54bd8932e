// Read-only decoding of a WorkQueue (inspect.hpp): its settings and counts
// from its root and state block, and who holds its leases, from its lease
// records (work_queue_layout.hpp). Nothing is read under the heap lock: a
// state being changed reads a moment old, or fails a check and is said to.
#include <algorithm>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "objects/inspect.hpp"
#include "objects/work_queue_layout.hpp"

namespace shm::inspect {

namespace {

using namespace work_queue_layout;

template <class T>
T field(const unsigned char* c, std::size_t off) {
    T v;
    std::memcpy(&v, c + off, sizeof v);
    return v;
}

constexpr std::size_t kRecordsPerRead = 1024;

}  // namespace

std::string work_queue_state(const ReadAt& read, const Place& at, WorkQueueState& q) {
    unsigned char r[sizeof(detail::WorkQueueRoot)];
    if (at.size < sizeof r || !read(at.offset, sizeof r, r)) return "its root could not be read";
    q.capacity = field<std::uint32_t>(r, offsetof(detail::WorkQueueRoot, capacity));
    q.max_deliveries = field<std::uint32_t>(r, offsetof(detail::WorkQueueRoot, max_deliveries));
    const std::uint64_t state = field<std::uint64_t>(r, offsetof(detail::WorkQueueRoot, state));
    if (q.capacity == 0 || q.capacity > kMaxCapacity) return "its capacity is out of range";
    if (state == 0) return {};  // not used yet
    if (state % 8 != 0 || state > UINT64_MAX - sizeof(WQState)) return "its state is misaligned";
    unsigned char s[sizeof(WQState)];
    if (!read(state, sizeof s, s)) return "its state could not be read";
    auto u64 = [&](std::size_t off) { return field<std::uint64_t>(s, off); };
    if (u64(offsetof(WQState, magic)) != kStateMagic || u64(offsetof(WQState, capacity)) != q.capacity)
        return "its state has the wrong magic or capacity";
    q.made = true;
    q.waiting = u64(offsetof(WQState, waiting));
    q.leased = u64(offsetof(WQState, leased));
    q.dead_letters = u64(offsetof(WQState, dead_count));
    q.unfinished = u64(offsetof(WQState, unfinished));
    q.redeliveries = u64(offsetof(WQState, redeliveries));
    q.closed = u64(offsetof(WQState, closed)) != 0;
    if (q.waiting > q.capacity || q.leased > q.capacity || q.dead_letters > q.capacity)
        return "its counts are out of range";

    // The lease records, a slice at a time, until every lease is found.
    const std::uint64_t leases = u64(offsetof(WQState, leases));
    if (q.leased == 0) return {};
    if (leases % 8 != 0 || leases > UINT64_MAX - std::uint64_t(q.capacity) * sizeof(LeaseRec))
        return "its lease records are misaligned";
    std::vector<unsigned char> buf(kRecordsPerRead * sizeof(LeaseRec));
    std::uint64_t found = 0;
    std::map<std::pair<std::int32_t, std::uint64_t>, std::uint64_t> held;  // by pid and start time
    for (std::uint64_t i = 0; i < q.capacity && found < q.leased; i += kRecordsPerRead) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kRecordsPerRead, q.capacity - i));
        if (!read(leases + i * sizeof(LeaseRec), n * sizeof(LeaseRec), buf.data()))
            return "its lease records could not be read";
        for (std::size_t k = 0; k < n; ++k) {
            const unsigned char* rec = buf.data() + k * sizeof(LeaseRec);
            if (field<std::uint64_t>(rec, offsetof(LeaseRec, item)) == 0) continue;
            ++found;
            const auto pid = static_cast<std::int32_t>(field<std::uint64_t>(rec, offsetof(LeaseRec, pid)));
            const std::uint64_t start = field<std::uint64_t>(rec, offsetof(LeaseRec, start_time));
            ++held[{pid, start}];
        }
    }
    for (const auto& [who, n] : held) q.holders.push_back(WorkQueueState::Holder{who.first, who.second, n});
    return {};
}

}  // namespace shm::inspect
