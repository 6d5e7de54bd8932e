// Read-only decoding of Dict and List (inspect.hpp, container_layout.hpp):
// a container's named object is a root word holding the offset of its
// header (0 until first opened); the header starts with a magic word and
// the element count.
#include <cstddef>

#include "objects/container_layout.hpp"
#include "objects/inspect.hpp"

namespace shm::inspect {

std::string container_length(const ReadAt& read, const Place& at, std::uint64_t& length) {
    using namespace container_layout;
    const std::uint64_t magic = at.kind == ObjectKind::dict ? kDictMagic : kListMagic;
    std::uint64_t root = 0;
    if (at.size != sizeof root || !read(at.offset, sizeof root, &root)) return "its root could not be read";
    if (root == 0) {
        length = 0;
        return {};
    }
    std::uint64_t words[sizeof(CHdr) / 8];
    if (root % 8 != 0 || !read(root, sizeof words, words) || words[offsetof(CHdr, magic) / 8] != magic)
        return "its header could not be read (changing, or another layout)";
    length = words[offsetof(CHdr, count) / 8];
    return {};
}

}  // namespace shm::inspect
