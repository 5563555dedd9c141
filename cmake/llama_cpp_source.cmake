# The llama.cpp source that llama-cpp-python==0.3.36 vendors, fetched at configure time.
#
# Nothing from upstream is committed here (the one-ggml rule): we download the pinned
# llama-cpp-python sdist from PyPI, check its SHA-256, and extract its vendor/llama.cpp
# (plus the git metadata of that submodule, so ggml_commit() reports the same string as a
# native llama-cpp-python build of the same sdist). The tarball and the extracted tree are
# cached under the build directory, so a rebuild neither downloads nor extracts again.
#
# Sources, first that applies:
#   DQ_LLAMA_CPP_SOURCE_DIR (CMake option or environment variable): an extracted llama.cpp
#       tree (or an extracted llama-cpp-python sdist, whose vendor/llama.cpp is used) -- offline builds;
#   DQ_LLAMA_CPP_SDIST (CMake option or environment variable): a local llama_cpp_python-0.3.36.tar.gz;
#   the cached tarball under ${CMAKE_BINARY_DIR}/_deps;
#   a download from PyPI (the sdist's permanent URL); if that fails,
#   `python -m pip download` (uses pip's own index, proxy and certificate configuration).
#
# Result: DQ_LLAMA_CPP_DIR, the llama.cpp source root.

set(DQ_LLAMA_CPP_PYTHON_VERSION "0.3.36")
set(DQ_LLAMA_CPP_COMMIT "0c1e570")   # ggml-org/llama.cpp@0c1e57098bba, vendored by 0.3.36
set(DQ_GGML_VERSION "0.25.3")
set(DQ_LLAMA_CPP_SDIST_NAME "llama_cpp_python-${DQ_LLAMA_CPP_PYTHON_VERSION}")
set(DQ_LLAMA_CPP_SDIST_SHA256 "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
set(DQ_LLAMA_CPP_SDIST_URL
    "https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz")

set(DQ_LLAMA_CPP_SOURCE_DIR "$ENV{DQ_LLAMA_CPP_SOURCE_DIR}" CACHE PATH
    "extracted llama.cpp source (or llama-cpp-python sdist) to build instead of downloading")
set(DQ_LLAMA_CPP_SDIST "$ENV{DQ_LLAMA_CPP_SDIST}" CACHE FILEPATH
    "local ${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz to use instead of downloading")

function(_dq_sha256_ok file out)
  set(ok FALSE)
  if(EXISTS "${file}")
    file(SHA256 "${file}" h)
    if(h STREQUAL DQ_LLAMA_CPP_SDIST_SHA256)
      set(ok TRUE)
    endif()
  endif()
  set(${out} ${ok} PARENT_SCOPE)
endfunction()

function(_dq_fetch_sdist tarball)
  _dq_sha256_ok("${tarball}" ok)
  if(ok)
    return()
  endif()
  get_filename_component(dir "${tarball}" DIRECTORY)
  file(MAKE_DIRECTORY "${dir}")
  message(STATUS "llama.cpp: downloading ${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz from PyPI")
  file(DOWNLOAD "${DQ_LLAMA_CPP_SDIST_URL}" "${tarball}.part" STATUS st TLS_VERIFY ON INACTIVITY_TIMEOUT 60)
  list(GET st 0 code)
  if(code EQUAL 0)
    _dq_sha256_ok("${tarball}.part" ok)
    if(ok)
      file(RENAME "${tarball}.part" "${tarball}")
      return()
    endif()
    message(WARNING "llama.cpp: the download has the wrong SHA-256; trying pip")
  else()
    list(GET st 1 msg)
    message(STATUS "llama.cpp: direct download failed (${msg}); trying pip download")
  endif()
  file(REMOVE "${tarball}.part")

  # pip knows the user's index, mirror, proxy and certificate settings
  if(NOT Python_EXECUTABLE)
    find_package(Python COMPONENTS Interpreter REQUIRED)
  endif()
  set(pipdir "${dir}/pip-download")
  file(REMOVE_RECURSE "${pipdir}")
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-binary :all: --disable-pip-version-check
            -d "${pipdir}" "llama-cpp-python==${DQ_LLAMA_CPP_PYTHON_VERSION}")
  _dq_sha256_ok("${pipdir}/${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz" ok)
  if(NOT ok)
    message(FATAL_ERROR
      "llama.cpp: could not fetch ${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz (sha256 ${DQ_LLAMA_CPP_SDIST_SHA256}).\n"
      "Offline? Download it elsewhere with\n"
      "  pip download --no-deps --no-binary :all: llama-cpp-python==${DQ_LLAMA_CPP_PYTHON_VERSION}\n"
      "and set DQ_LLAMA_CPP_SDIST=/path/to/${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz, or extract it and set "
      "DQ_LLAMA_CPP_SOURCE_DIR=/path/to/${DQ_LLAMA_CPP_SDIST_NAME}.")
  endif()
  file(RENAME "${pipdir}/${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz" "${tarball}")
  file(REMOVE_RECURSE "${pipdir}")
endfunction()

if(DQ_LLAMA_CPP_SOURCE_DIR)
  get_filename_component(_src "${DQ_LLAMA_CPP_SOURCE_DIR}" ABSOLUTE)
  if(EXISTS "${_src}/vendor/llama.cpp/CMakeLists.txt")
    set(_src "${_src}/vendor/llama.cpp")
  endif()
  set(DQ_LLAMA_CPP_DIR "${_src}")
  message(STATUS "llama.cpp: using the source in ${DQ_LLAMA_CPP_DIR} (DQ_LLAMA_CPP_SOURCE_DIR)")
else()
  set(_deps "${CMAKE_BINARY_DIR}/_deps")
  set(_root "${_deps}/${DQ_LLAMA_CPP_SDIST_NAME}")
  set(_stamp "${_deps}/${DQ_LLAMA_CPP_SDIST_NAME}.extracted")
  if(NOT EXISTS "${_stamp}" OR NOT EXISTS "${_root}/vendor/llama.cpp/CMakeLists.txt")
    if(DQ_LLAMA_CPP_SDIST)
      set(_tarball "${DQ_LLAMA_CPP_SDIST}")
      _dq_sha256_ok("${_tarball}" _ok)
      if(NOT _ok)
        message(FATAL_ERROR "llama.cpp: ${_tarball} (DQ_LLAMA_CPP_SDIST) is missing or is not "
                            "${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz (sha256 ${DQ_LLAMA_CPP_SDIST_SHA256})")
      endif()
    else()
      set(_tarball "${_deps}/${DQ_LLAMA_CPP_SDIST_NAME}.tar.gz")
      _dq_fetch_sdist("${_tarball}")
    endif()
    message(STATUS "llama.cpp: extracting vendor/llama.cpp from ${_tarball}")
    file(REMOVE_RECURSE "${_root}")
    # only the vendored llama.cpp and its submodule git data (for the commit id)
    file(ARCHIVE_EXTRACT INPUT "${_tarball}" DESTINATION "${_deps}"
         PATTERNS "${DQ_LLAMA_CPP_SDIST_NAME}/vendor/llama.cpp"
                  "${DQ_LLAMA_CPP_SDIST_NAME}/.git/modules/vendor/llama.cpp")
    file(WRITE "${_stamp}" "${DQ_LLAMA_CPP_SDIST_SHA256}\n")
  endif()
  set(DQ_LLAMA_CPP_DIR "${_root}/vendor/llama.cpp")
endif()

if(NOT EXISTS "${DQ_LLAMA_CPP_DIR}/CMakeLists.txt" OR NOT EXISTS "${DQ_LLAMA_CPP_DIR}/ggml/CMakeLists.txt")
  message(FATAL_ERROR "llama.cpp: no llama.cpp source tree in ${DQ_LLAMA_CPP_DIR}")
endif()

# the same ggml as llama-cpp-python ${DQ_LLAMA_CPP_PYTHON_VERSION}, or stop here
file(STRINGS "${DQ_LLAMA_CPP_DIR}/ggml/CMakeLists.txt" _v REGEX "^set\\(GGML_VERSION_(MAJOR|MINOR|PATCH) [0-9]+\\)")
string(REGEX REPLACE "[^;]*MAJOR ([0-9]+)\\);[^;]*MINOR ([0-9]+)\\);[^;]*PATCH ([0-9]+)\\)" "\\1.\\2.\\3" _v "${_v}")
if(NOT _v STREQUAL DQ_GGML_VERSION)
  message(FATAL_ERROR "llama.cpp: ${DQ_LLAMA_CPP_DIR} has ggml ${_v}; llama-cpp-python "
                      "${DQ_LLAMA_CPP_PYTHON_VERSION} vendors ggml ${DQ_GGML_VERSION} (llama.cpp ${DQ_LLAMA_CPP_COMMIT})")
endif()
