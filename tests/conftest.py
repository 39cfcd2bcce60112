"""pytest puts this folder on sys.path (rootdir-relative "prepend" imports), so test modules in any
sub-folder can import the shared helpers that live here, such as `safetensors_format`."""
