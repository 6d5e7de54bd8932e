// shmctl stat: a segment's header, attach slots and objects with their
// state, or what is known of any other file.
#include <optional>

#include <fmt/format.h>

#include <shm/names.hpp>

#include "commands.hpp"

namespace shmctl {

namespace {

// ---- objects ----------------------------------------------------------------

std::string lock_text(const admin::LockState& l) {
    std::string s;
    if (l.held) {
        s = fmt::format("held by pid {}", l.owner_pid);
        if (l.owner_died)
            s += ", which died: the next locker recovers it";
        else
            s += l.owner_alive ? " (alive)" : "";
        if (l.depth > 1) s += fmt::format(", depth {}", l.depth);
    } else if (l.owner_died) {
        s = fmt::format("free; its owner (pid {}) died holding it: the next locker recovers it", l.owner_pid);
    } else {
        s = "free";
    }
    return s + "; " + count_text(l.recoveries, "recovery", "recoveries");
}

std::string queue_text(const admin::ObjectState& o) {
    std::vector<std::string> parts = {fmt::format("{} of {} items", *o.value, *o.capacity)};
    if (o.max_item_size) parts.push_back("items up to " + bytes_text(*o.max_item_size));
    if (o.max_bytes) parts.push_back(bytes_text(o.bytes_used.value_or(0)) + " of " + bytes_text(*o.max_bytes) + " in use");
    if (o.closed && *o.closed) parts.push_back("closed");
    if (o.repairs && *o.repairs) parts.push_back(count_text(*o.repairs, "repair", "repairs"));
    return fmt::format("{}", fmt::join(parts, ", "));
}

// "3 waiting, 2 leased (pid 41: 1; pid 42, dead: 1), 1 dead letter; 6
// unfinished; capacity 1024, up to 4 deliveries; 1 redelivery".
std::string work_queue_text(const admin::ObjectState& o) {
    if (o.made && !*o.made)
        return fmt::format("no state yet (its first handle makes it); capacity {}, up to {}", *o.capacity,
                           count_text(o.max_deliveries.value_or(0), "delivery", "deliveries"));
    std::string leased = fmt::format("{} leased", o.leased.value_or(0));
    if (!o.lease_holders.empty()) {
        std::vector<std::string> who;
        constexpr std::size_t kShown = 8;
        for (std::size_t i = 0; i < o.lease_holders.size() && i < kShown; ++i) {
            const admin::LeaseHolder& h = o.lease_holders[i];
            who.push_back(fmt::format("pid {}{}: {}", h.pid, h.alive ? "" : ", dead", h.leases));
        }
        if (o.lease_holders.size() > kShown) who.push_back(fmt::format("{} more", o.lease_holders.size() - kShown));
        leased += fmt::format(" ({})", fmt::join(who, "; "));
    }
    std::vector<std::string> parts = {fmt::format("{} waiting", o.value.value_or(0)), leased,
                                      count_text(o.dead_letters.value_or(0), "dead letter", "dead letters")};
    std::string s = fmt::format("{}; {} unfinished; capacity {}, up to {}; {}", fmt::join(parts, ", "),
                                o.unfinished.value_or(0), *o.capacity,
                                count_text(o.max_deliveries.value_or(0), "delivery", "deliveries"),
                                count_text(o.redeliveries.value_or(0), "redelivery", "redeliveries"));
    if (o.closed && *o.closed) s += "; closed";
    return s;
}

// "1000 × c_double ('d'), lock free; 0 recoveries", "c_int ('i'), no lock".
std::string shared_array_text(const admin::ObjectState& o) {
    std::string type = o.typecode && !o.typecode->empty()
                           ? fmt::format("{} ('{}')", o.element_type.value_or("?"), *o.typecode)
                           : fmt::format("{}-byte C++ type", o.element_size.value_or(0));
    std::string s = o.info.kind == shm::ObjectKind::shared_scalar ? type : fmt::format("{} × {}", o.length.value_or(0), type);
    return s + ", " + (o.lock ? "lock " + lock_text(*o.lock) : std::string("no lock"));
}

std::string object_text(const admin::ObjectState& o) {
    if (o.error) return o.error.message;
    if (o.element_type) return shared_array_text(o);
    if (o.lock) return lock_text(*o.lock);
    if (o.info.kind == shm::ObjectKind::queue && o.value && o.capacity) return queue_text(o);
    if (o.info.kind == shm::ObjectKind::work_queue && o.capacity) return work_queue_text(o);
    std::vector<std::string> parts;
    if (o.value) parts.push_back(fmt::format("value {}", *o.value));
    if (o.bound) parts.push_back(fmt::format("bound {}", *o.bound));
    if (o.is_set) parts.push_back(*o.is_set ? "set" : "clear");
    if (o.parties) parts.push_back(fmt::format("{} of {} parties waiting", o.n_waiting.value_or(0), *o.parties));
    if (o.generation) parts.push_back(fmt::format("generation {}", *o.generation));
    if (o.broken && *o.broken) parts.push_back("broken");
    if (o.waiters) parts.push_back(fmt::format("~{} waiters", *o.waiters));
    if (o.length)
        parts.push_back(fmt::format("{} {}", *o.length, o.info.kind == shm::ObjectKind::dict ? "keys" : "items"));
    return parts.empty() ? "-" : fmt::format("{}", fmt::join(parts, ", "));
}

json lock_json(const admin::LockState& l) {
    return {{"held", l.held},
            {"owner_pid", l.owner_pid},
            {"owner_alive", l.owner_alive},
            {"owner_died", l.owner_died},
            {"recoveries", l.recoveries},
            {"depth", l.depth}};
}

json object_json(const admin::ObjectState& o) {
    json st = json::object();
    if (o.lock) st = lock_json(*o.lock);
    if (o.value)
        st[o.info.kind == shm::ObjectKind::queue ? "depth" : o.info.kind == shm::ObjectKind::work_queue ? "waiting" : "value"] =
            *o.value;
    if (o.bound) st["bound"] = *o.bound;
    if (o.waiters) st["waiters"] = *o.waiters;
    if (o.is_set) st["is_set"] = *o.is_set;
    if (o.parties) st["parties"] = *o.parties;
    if (o.n_waiting) st["n_waiting"] = *o.n_waiting;
    if (o.generation) st["generation"] = *o.generation;
    if (o.broken) st["broken"] = *o.broken;
    if (o.length) st["length"] = *o.length;
    if (o.capacity) st["capacity"] = *o.capacity;
    if (o.max_item_size) st["max_item_size"] = *o.max_item_size;
    if (o.max_bytes) st["max_bytes"] = *o.max_bytes;
    if (o.bytes_used) st["bytes_used"] = *o.bytes_used;
    if (o.closed) st["closed"] = *o.closed;
    if (o.repairs) st["repairs"] = *o.repairs;
    if (o.max_deliveries) st["max_deliveries"] = *o.max_deliveries;
    if (o.made) st["made"] = *o.made;
    if (o.leased) st["leased"] = *o.leased;
    if (o.dead_letters) st["dead_letters"] = *o.dead_letters;
    if (o.unfinished) st["unfinished"] = *o.unfinished;
    if (o.redeliveries) st["redeliveries"] = *o.redeliveries;
    if (o.info.kind == shm::ObjectKind::work_queue && o.made) {
        json holders = json::array();
        for (const admin::LeaseHolder& h : o.lease_holders)
            holders.push_back({{"pid", h.pid}, {"alive", h.alive}, {"leases", h.leases}});
        st["lease_holders"] = holders;
    }
    if (o.element_type) st["element_type"] = *o.element_type;
    if (o.typecode) st["typecode"] = *o.typecode;
    if (o.element_size) st["element_size"] = *o.element_size;
    if (o.has_lock) st["has_lock"] = *o.has_lock;
    return {{"name", o.info.name},
            {"kind", shm::to_string(o.info.kind)},
            {"offset", o.info.offset},
            {"size", o.info.size},
            {"problem", o.error.message},
            {"state", st}};
}

// ---- the segment --------------------------------------------------------------

// The command name of an attached process, if it is alive and was seen.
std::string comm_of(const admin::Entry& e, const shm::AttachInfo& a) {
    std::string comm;
    for (const admin::User& u : e.users)
        if (u.pid == a.pid) comm = u.comm;
    return a.alive ? comm : "";
}

json segment_json(const admin::SegmentInfo& s, const admin::Entry& e) {
    json slots = json::array();
    for (const shm::AttachInfo& a : s.slots)
        slots.push_back({{"slot", a.slot},
                         {"pid", a.pid},
                         {"uid", a.uid},
                         {"start_time", a.start_time},
                         {"attached_at", a.attached_at_ns / 1000000000},
                         {"alive", a.alive},
                         {"comm", comm_of(e, a)}});
    json objects = json::array();
    for (const admin::ObjectState& o : s.objects) objects.push_back(object_json(o));
    json j = segment_summary_json(s);
    j.update({{"path", s.path},
              {"total_size", s.total_size},
              {"heap_size", s.heap_size},
              {"heap_used", s.heap_used},
              {"heap_free", s.heap_size - s.heap_used},
              {"max_attach", s.max_attach},
              {"creator",
               {{"pid", s.creator_pid},
                {"uid", s.creator_uid},
                {"start_time", s.creator_start_time},
                {"alive", s.creator_alive}}},
              {"created_at", s.created_at_ns / 1000000000},
              {"attachments", slots},
              {"objects_read", s.objects_read},
              {"directory_busy", s.directory_busy},
              {"directory_note", s.directory_note},
              {"objects", objects}});
    return j;
}

void print_file_lines(const admin::Entry& e) {
    fmt::print("file:      {}\n", printable(e.path));
    fmt::print("kind:      {}\n", admin::to_string(e.kind));
    fmt::print("size:      {} allocated ({} bytes long)\n", bytes_text(e.allocated), e.size);
    fmt::print("owner:     {} (uid {}), mode {}\n", user_name(e.uid), e.uid, mode_text(e.mode));
    fmt::print("modified:  {} ({} ago)\n", clock_time(e.mtime_ns), human_age(now_ns() - e.mtime_ns));
    std::string st = state_text(e.state);
    if (!e.note.empty()) st += " (" + e.note + ")";
    fmt::print("state:     {}\n", st);
}

void print_foreign(const admin::Entry& e) {
    print_file_lines(e);
    fmt::print("users:     {}\n", e.users.empty() ? "-" : users_text(e, 64));
    for (const admin::User& u : e.users)
        fmt::print("  pid {} {}: {}{}{}\n", u.pid, printable(u.comm), u.mapped ? "mapped" : "",
                   u.mapped && u.open ? ", " : "", u.open ? "open" : "");
}

void print_slots(const admin::SegmentInfo& s, const admin::Entry& e) {
    fmt::print("attach:    {} of {} slots occupied: {} alive, {} dead\n", s.slots.size(), s.max_attach, s.live, s.dead);
    if (s.slots.empty()) return;
    Table t({"SLOT", "PID", "USER", "ATTACHED", "ALIVE", "COMMAND"});
    for (const shm::AttachInfo& a : s.slots) {
        std::string comm = printable(comm_of(e, a));
        t.add({std::to_string(a.slot), std::to_string(a.pid), user_name(a.uid), clock_time(a.attached_at_ns),
               a.alive ? "yes" : "no (dead)", comm.empty() ? "-" : comm});
    }
    t.print(stdout, true, "  ");
}

void print_objects(const admin::SegmentInfo& s) {
    if (s.directory_busy) {
        fmt::print("objects:   ? ({})\n", s.directory_note);
        return;
    }
    fmt::print("objects:   {}\n", s.objects.size());
    if (s.objects.empty()) return;
    Table t({"NAME", "KIND", "SIZE", "STATE"});
    t.right_align(2);
    for (const admin::ObjectState& o : s.objects)
        t.add({o.info.name, shm::to_string(o.info.kind), bytes_text(o.info.size), object_text(o)});
    t.print(stdout, true, "  ");
}

void print_segment(const admin::SegmentInfo& s, const admin::Entry& e) {
    fmt::print("layout:    version {}\n", s.layout_version);
    fmt::print("heap:      {}: {} used, {} free\n", bytes_text(s.heap_size), bytes_text(s.heap_used),
               bytes_text(s.heap_size - s.heap_used));
    fmt::print("created:   {} ({} ago) by pid {} ({}), {} (uid {})\n", clock_time(s.created_at_ns),
               human_age(now_ns() - s.created_at_ns), s.creator_pid, s.creator_alive ? "alive" : "exited",
               user_name(s.creator_uid), s.creator_uid);
    fmt::print("flags:     {}\n", s.persistent ? "persistent" : "-");
    print_slots(s, e);
    print_objects(s);
}

}  // namespace

int cmd_stat(const std::string& name, bool as_json) {
    std::optional<admin::Entry> found = admin::lookup(name);
    if (!found) {
        fmt::print(stderr, "shmctl stat: no segment or file '{}' in {}\n", printable(name),
                   shm::shm_directory().string());
        return 1;
    }
    const admin::Entry& e = *found;
    std::optional<admin::SegmentInfo> seg;
    if (e.kind == admin::FileKind::libshm) seg = admin::inspect_segment(e.path, true);
    const bool ok = !seg || seg->status == admin::SegmentStatus::ok ||
                    seg->status == admin::SegmentStatus::uninitialised || seg->status == admin::SegmentStatus::dead;
    if (as_json) {
        json j = {{"schema_version", kSchemaVersion}, {"file", entry_json(e)}};
        j["segment"] = seg ? segment_json(*seg, e) : json(nullptr);
        print_json(j);
        return ok ? 0 : 1;
    }
    if (!seg) {
        print_foreign(e);
        return 0;
    }
    fmt::print("segment:   {}\n", printable(seg->name));
    print_file_lines(e);
    if (seg->status == admin::SegmentStatus::ok) {
        print_segment(*seg, e);
        return 0;
    }
    fmt::print("error:     {}\n", seg->error.message);
    if (ok) return 0;
    fmt::print(stderr, "shmctl stat: {}: {}\n", printable(e.name), seg->error.message);
    return 1;
}

}  // namespace shmctl
