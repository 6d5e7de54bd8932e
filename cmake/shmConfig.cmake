# find_package(shm), the package's name before it was installed as libshm:
# the same shm::shm target, from the same files.
include("${CMAKE_CURRENT_LIST_DIR}/../libshm/libshmConfig.cmake")
