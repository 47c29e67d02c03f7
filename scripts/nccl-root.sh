# Sourced by the scripts: torch_nccl_root prints PyTorch's NCCL (<venv>/site-packages/nvidia/nccl)
# when it has the device API header, else nothing. On the GPU machines that is the NCCL torchrun
# jobs load, so building against it keeps build and run on one NCCL version (DEVICE-NOTES).
torch_nccl_root() {
  local d
  d=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "nccl"))' 2>/dev/null) || return 0
  [ -f "$d/include/nccl_device.h" ] && echo "$d"
  return 0
}
