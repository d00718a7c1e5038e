"""Matmul GFLOP/s at the flow head's shapes (rows x 256 @ 256 x 256 and x 768) against a square 1024 matmul.

Run with the machine otherwise idle: python benchmarks/matmul_shapes.py (2 threads).
"""
import time, torch
torch.set_num_threads(2)
def rate(m, k, n, secs=1.0):
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3): a @ b
    best = 0
    for _ in range(3):
        it, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < secs / 3:
            a @ b; it += 1
        best = max(best, 2 * m * k * n * it / (time.perf_counter() - t0) / 1e9)
    return best
print("square 1024:", round(rate(1024, 1024, 1024), 1))
for m in (32, 128, 512, 2048, 8192):
    print(f"{m} x 256 @ 256 x 256:", round(rate(m, 256, 256), 1), " | x 768 (adaLN):", round(rate(m, 256, 768), 1))
