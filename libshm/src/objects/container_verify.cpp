// verify() of shm::Dict and shm::List: walk a container, the nested ones
// and the heap, and report what is inconsistent.
#include <set>

#include "objects/container_op.hpp"

namespace shm::containers {

namespace {

// Where in the container a problem is, as "name[3]['key']": a chain of
// stack frames, spelled out only for a problem found (a list of millions
// of items is walked without building a string per item, under the lock).
struct Where {
    const Where* up = nullptr;
    const char* name = nullptr;  // the root
    std::string_view key;        // a dict entry's key (first 40 bytes)
    std::uint64_t index = 0;     // a list item's index
    enum Kind { root, item, entry } kind = root;

    std::string str() const {
        if (kind == root) return name;
        std::string s = up->str();
        if (kind == item) return s + "[" + std::to_string(index) + "]";
        return s + "['" + std::string(key) + "']";
    }
    friend std::string operator+(const Where& w, const char* tail) { return w.str() + tail; }
};

struct Verifier {
    const Op& op;
    std::vector<std::string>& problems;
    std::set<std::uint64_t> seen;
    void bad(const std::string& s) {
        if (problems.size() < 64) problems.push_back(s);
    }
    bool in_heap(std::uint64_t off, std::uint64_t len) const { return layout::in_heap(op.h, off, len); }
    void cell(const Cell& c, const Where& where, int depth) {
        std::uint64_t meta = rd(c.meta), data = rd(c.data);
        VT ty = static_cast<VT>(meta & 0xff);
        if ((meta & 0xff) > 7) return bad(where + ": unknown value type");
        if (ty == VT::string || ty == VT::bytes) {
            std::uint64_t len = meta >> 8;
            if (len && !in_heap(data, len)) bad(where + ": string outside the heap");
        } else if (ty == VT::list || ty == VT::dict) {
            container(data, ty == VT::dict ? kDictMagic : kListMagic, where, depth + 1);
        } else if (meta >> 8) {
            bad(where + ": scalar with a length");
        }
    }
    void container(std::uint64_t off, std::uint64_t magic, const Where& where, int depth) {
        if (depth > 64) return bad(where + ": nesting deeper than 64 (a cycle?)");
        if (!in_heap(off, sizeof(CHdr)) || off % 8 != 0) return bad(where + ": container header outside the heap");
        if (!seen.insert(off).second) return bad(where + ": container referenced twice");
        CHdr* c = op.at<CHdr>(off);
        if (rd(c->magic) != magic) return bad(where + ": bad container magic");
        std::uint64_t cap = rd(c->capacity), n = rd(c->count), tab = rd(c->table);
        if (cap == 0) {
            if (n || tab) bad(where + ": empty table with items");
            return;
        }
        if ((cap & (cap - 1)) && magic == kDictMagic) bad(where + ": dict capacity not a power of two");
        const bool dict = magic == kDictMagic;
        const std::uint64_t esz = dict ? sizeof(DEntry) : sizeof(Cell);
        if (!layout::in_heap(op.h, tab, cap, esz) || tab % 8 != 0) return bad(where + ": table outside the heap");
        const std::uint64_t room = heap::payload_room(op.h, tab);
        if ((dict ? room / sizeof(DEntry) : room / sizeof(Cell)) < cap)
            return bad(where + ": table smaller than its capacity");
        if (magic == kListMagic) {
            if (n > cap) return bad(where + ": count above capacity");
            Cell* cs = op.at<Cell>(tab);
            Where w{&where, nullptr, {}, 0, Where::item};
            for (std::uint64_t i = 0; i < n; ++i) {
                w.index = i;
                cell(cs[i], w, depth);
            }
            return;
        }
        DEntry* es = op.at<DEntry>(tab);
        std::uint64_t live = 0, used = 0;
        for (std::uint64_t i = 0; i < cap; ++i) {
            std::uint64_t k = rd(es[i].key), len = rd(es[i].key_len);
            if (k == kEmpty) continue;
            ++used;
            if (k == kTomb) continue;
            ++live;
            if (len && !in_heap(k, len)) {
                bad(where + ": key outside the heap");
                continue;
            }
            std::string_view key(len ? op.base + k : "", len);
            if (rd(es[i].hash) != hash_key(key)) bad(where + ": key hash mismatch");
            std::int64_t at = -1;
            try {
                at = op.dict_find(c, key, hash_key(key), nullptr);  // may meet a bad key on its way
            } catch (const corrupted& x) {
                bad(where + ": " + x.what());
            }
            if (at != static_cast<std::int64_t>(i)) bad(where + ": key not reachable by probing");
            cell(es[i].v, Where{&where, nullptr, key.substr(0, 40), 0, Where::entry}, depth);
        }
        if (live != n) bad(where + ": count " + std::to_string(n) + " but " + std::to_string(live) + " live entries");
        if (used != rd(c->used)) bad(where + ": used counter disagrees with the table");
    }
};

}  // namespace

std::vector<std::string> verify_container(const std::shared_ptr<detail::SegmentState>& seg, std::uint64_t off, std::uint64_t magic, const char* what) {
    std::vector<std::string> problems;
    Op op(seg);
    Verifier v{op, problems, {}};
    v.container(off, magic, Where{nullptr, what, {}, 0, Where::root}, 0);
    HeapReport r = heap::verify(op.h);
    for (auto& p : r.problems) problems.push_back("heap: " + p);
    op.t.commit();
    return problems;
}

}  // namespace shm::containers
