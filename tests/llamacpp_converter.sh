#!/usr/bin/env bash
# llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py) for the slow cross-check in
# tests/test_families_llamacpp_convert.py. They ship in llama-cpp-python's source distribution (the version
# pinned in pyproject.toml); this unpacks them and makes a venv of their own with sentencepiece, which the
# project's venv doesn't have. That venv borrows torch, transformers and safetensors from the project's venv
# (a .pth line: read only, nothing is installed there), so it costs one small wheel.
#
#   tests/llamacpp_converter.sh [DIR]        # default DIR: /tmp/llamacpp-converter
#   then: TUI_ALIGN_LLAMACPP_CONVERTER=DIR/llama.cpp/convert_hf_to_gguf.py \
#         TUI_ALIGN_LLAMACPP_PYTHON=DIR/venv/bin/python python -m pytest -m slow tests/test_families_llamacpp_convert.py
set -euo pipefail
dir="${1:-/tmp/llamacpp-converter}"
version="$(python -c 'import llama_cpp; print(llama_cpp.__version__)')"
site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$dir"
[ -f "$dir/llama_cpp_python-$version.tar.gz" ] ||
    python -m pip download "llama-cpp-python==$version" --no-binary :all: --no-deps -d "$dir"
rm -rf "$dir/llama.cpp" "$dir/unpack" && mkdir "$dir/unpack"
inner="llama_cpp_python-$version/vendor/llama.cpp"
tar xzf "$dir/llama_cpp_python-$version.tar.gz" -C "$dir/unpack" \
    "$inner/convert_hf_to_gguf.py" "$inner/convert_lora_to_gguf.py" "$inner/conversion" "$inner/gguf-py"
mv "$dir/unpack/$inner" "$dir/llama.cpp" && rm -rf "$dir/unpack"
"$(python -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')" -m venv "$dir/venv"
echo "$site" > "$("$dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-project.pth"
"$dir/venv/bin/python" -m pip install --quiet sentencepiece
echo "TUI_ALIGN_LLAMACPP_CONVERTER=$dir/llama.cpp/convert_hf_to_gguf.py"
echo "TUI_ALIGN_LLAMACPP_PYTHON=$dir/venv/bin/python"
