# Builds ggml and libllama from ${DQ_LLAMA_CPP_DIR} (cmake/llama_cpp_source.cmake) as a
# subproject, and installs the shared libraries into the wheel as decoquant/lib/.
#
# One ggml per process: libdecoquant links these libraries (RUNPATH $ORIGIN/lib), and
# llama-cpp-python, installed with CMAKE_ARGS=-DLLAMA_BUILD=OFF (no native code of its own),
# loads libllama.so from decoquant/lib through LLAMA_CPP_LIB_PATH (py/decoquant/_llama.py).
# Every library keeps upstream's SONAME (libggml-base.so.0, ...) and RUNPATH $ORIGIN,
# exactly as in a native llama-cpp-python build.
#
# Built: ggml, ggml-base, ggml-cpu (+ any backend switched on, e.g. ggml-cuda) and llama.
# Not built: common, tools, examples, tests, server, mtmd. The subproject is EXCLUDE_FROM_ALL;
# only the libraries above are put back into ALL.
#
# Options: any -DGGML_* / -DLLAMA_* (from CMAKE_ARGS under pip) reaches llama.cpp as usual,
# e.g. CMAKE_ARGS="-DGGML_CUDA=on". GGML_NATIVE keeps upstream's default (ON unless cross
# compiling or SOURCE_DATE_EPOCH is set), which is also what llama-cpp-python's own source
# build uses: the package is always built on the machine that runs it, and parity benchmarks
# against llama.cpp need the same code generation. For a wheel that moves to another CPU,
# pass -DGGML_NATIVE=OFF.

# CMAKE_ARGS="-DLLAMA_BUILD=OFF" is for llama-cpp-python (pip hands CMAKE_ARGS to every
# scikit-build-core build in the same command); it does not switch off our llama.cpp build.
if(DEFINED LLAMA_BUILD OR DEFINED LLAVA_BUILD)
  message(STATUS "llama.cpp: LLAMA_BUILD=${LLAMA_BUILD} LLAVA_BUILD=${LLAVA_BUILD} are llama-cpp-python "
                 "options, ignored here")
endif()

# Upstream defaults for a subproject are already OFF; kept explicit and overridable.
set(LLAMA_BUILD_COMMON   OFF CACHE BOOL "llama: build common utils library")
set(LLAMA_BUILD_TESTS    OFF CACHE BOOL "llama: build tests")
set(LLAMA_BUILD_TOOLS    OFF CACHE BOOL "llama: build tools")
set(LLAMA_BUILD_EXAMPLES OFF CACHE BOOL "llama: build examples")
set(LLAMA_BUILD_SERVER   OFF CACHE BOOL "llama: build server example")
set(LLAMA_BUILD_APP      OFF CACHE BOOL "llama: build the unified binary")

# lists the shared libraries defined in <dir> and below
function(_dq_shared_libs dir out)
  set(libs)
  get_property(tgts DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(t IN LISTS tgts)
    get_target_property(type ${t} TYPE)
    if(type STREQUAL "SHARED_LIBRARY")
      list(APPEND libs ${t})
    elseif(type STREQUAL "MODULE_LIBRARY")
      message(FATAL_ERROR "llama.cpp: ${t} is a dynamically loaded backend; build with GGML_BACKEND_DL=OFF")
    endif()
  endforeach()
  get_property(subs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(s IN LISTS subs)
    _dq_shared_libs("${s}" sub)
    list(APPEND libs ${sub})
  endforeach()
  set(${out} ${libs} PARENT_SCOPE)
endfunction()

function(dq_add_llama_cpp)
  # what llama-cpp-python's loader needs: shared libraries, the CPU backend linked in
  set(BUILD_SHARED_LIBS ON)
  set(GGML_BACKEND_DL OFF)
  # upstream's own install rules (headers, CMake configs, pkg-config) go to a component
  # that the wheel never installs (pyproject.toml: install.components)
  set(CMAKE_INSTALL_DEFAULT_COMPONENT_NAME llama_cpp_upstream)
  add_subdirectory("${DQ_LLAMA_CPP_DIR}" "${CMAKE_BINARY_DIR}/llama.cpp" EXCLUDE_FROM_ALL)

  # No AMX code in ggml-cpu. GGML_NATIVE builds with -march=native, which on a CPU with AMX
  # defines __AMX_INT8__ and compiles ggml's AMX extra buffer type; its batched matmul crashes
  # in ggml_backend_amx_mul_mat (upstream ggml-org/llama.cpp#20824, #16315). Switching the
  # instructions off after -march=native removes that code path (GGML_AMX_* only act when
  # GGML_NATIVE is OFF, and default to OFF there). -DDQ_ALLOW_AMX=ON keeps it.
  option(DQ_ALLOW_AMX "let ggml-cpu compile its AMX code (crashes on batched matmuls, see above)" OFF)
  if(TARGET ggml-cpu AND CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" AND NOT DQ_ALLOW_AMX)
    include(CheckCCompilerFlag)
    check_c_compiler_flag("-mno-amx-int8" DQ_CC_HAS_NO_AMX)
    if(DQ_CC_HAS_NO_AMX)
      target_compile_options(ggml-cpu PRIVATE -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
    endif()
  endif()

  get_directory_property(commit DIRECTORY "${DQ_LLAMA_CPP_DIR}/ggml" DEFINITION GGML_BUILD_COMMIT)
  get_directory_property(native DIRECTORY "${DQ_LLAMA_CPP_DIR}/ggml" DEFINITION GGML_NATIVE)
  if(NOT commit MATCHES "^(${DQ_LLAMA_CPP_COMMIT}|unknown)")
    message(WARNING "llama.cpp: ${DQ_LLAMA_CPP_DIR} is at commit ${commit}, not ${DQ_LLAMA_CPP_COMMIT} "
                    "(llama-cpp-python ${DQ_LLAMA_CPP_PYTHON_VERSION})")
  endif()

  _dq_shared_libs("${DQ_LLAMA_CPP_DIR}/ggml" ggml_libs)
  message(STATUS "llama.cpp: building ${ggml_libs} llama (ggml ${DQ_GGML_VERSION}, commit ${commit}, "
                 "GGML_NATIVE=${native}, GGML_CUDA=${GGML_CUDA})")

  set(perms OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
  foreach(t IN LISTS ggml_libs ITEMS llama)
    set_target_properties(${t} PROPERTIES
      EXCLUDE_FROM_ALL FALSE
      INSTALL_RPATH "$ORIGIN"
      INSTALL_RPATH_USE_LINK_PATH TRUE   # e.g. the CUDA runtime outside the system paths
      BUILD_WITH_INSTALL_RPATH TRUE)     # installed as plain files, so no RPATH rewrite there
    # One file per library, no symlinks (a wheel cannot hold them, and a second copy under
    # another name could be loaded twice): ggml libraries under their SONAME, which is what
    # the dynamic linker looks for; libllama under the name llama-cpp-python opens.
    if(t STREQUAL "llama")
      set(name "$<TARGET_LINKER_FILE_NAME:${t}>")
    else()
      set(name "$<TARGET_SONAME_FILE_NAME:${t}>")
    endif()
    install(FILES "$<TARGET_FILE:${t}>" DESTINATION decoquant/lib RENAME "${name}"
            PERMISSIONS ${perms} COMPONENT decoquant)
  endforeach()
  # MIT: the notice travels with the binaries
  install(FILES "${DQ_LLAMA_CPP_DIR}/LICENSE" DESTINATION decoquant/lib RENAME LICENSE.llama.cpp
          COMPONENT decoquant)
endfunction()

dq_add_llama_cpp()
