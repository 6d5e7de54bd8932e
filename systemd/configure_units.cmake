# Writes the systemd units with the real paths of shmd and shmctl.
#
#   cmake -DSHM_UNIT_OUT=DIR (-DSHM_UNIT_BINDIR=DIR | -DSHM_UNIT_SHMD=FILE -DSHM_UNIT_SHMCTL=FILE)
#         -P configure_units.cmake
#
# `cmake --install` runs it (see CMakeLists.txt) with the bin directory of
# that install, so ExecStart= is right when the prefix is only given at
# install time (`cmake --install build --prefix /usr`). The systemd test runs
# it with the build tree's binaries, to check the very files install writes.
if(NOT DEFINED SHM_UNIT_OUT)
  message(FATAL_ERROR "configure_units.cmake: SHM_UNIT_OUT is not set")
endif()
if(NOT DEFINED SHM_UNIT_SHMD OR NOT DEFINED SHM_UNIT_SHMCTL)
  if(NOT DEFINED SHM_UNIT_BINDIR)
    message(FATAL_ERROR "configure_units.cmake: set SHM_UNIT_BINDIR, or SHM_UNIT_SHMD and SHM_UNIT_SHMCTL")
  endif()
  # A relative bin directory (the usual "bin") is relative to the prefix of
  # this install, which `cmake --install --prefix` sets.
  if(NOT IS_ABSOLUTE "${SHM_UNIT_BINDIR}")
    set(SHM_UNIT_BINDIR "${CMAKE_INSTALL_PREFIX}/${SHM_UNIT_BINDIR}")
  endif()
  set(SHM_UNIT_SHMD "${SHM_UNIT_BINDIR}/shmd")
  set(SHM_UNIT_SHMCTL "${SHM_UNIT_BINDIR}/shmctl")
endif()

foreach(unit shmd.service shmctl-gc.service)
  configure_file("${CMAKE_CURRENT_LIST_DIR}/${unit}.in" "${SHM_UNIT_OUT}/${unit}" @ONLY)
endforeach()
configure_file("${CMAKE_CURRENT_LIST_DIR}/shmctl-gc.timer" "${SHM_UNIT_OUT}/shmctl-gc.timer" COPYONLY)
