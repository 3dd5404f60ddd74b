"""Free memory of a device, for the checks that stop a model too large for the machine before
it is allocated."""
import torch


def available_memory(device):
    """Bytes free on ``device`` ("cpu", "cuda[:i]"), or None where it cannot be known (then no
    check is made): the CPU's MemAvailable (Linux), CUDA's free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
