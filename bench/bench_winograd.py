"""Winograd F(2x2, 3x3) written with torch ops (strided views, adds, 16 batched GEMMs) against
oneDNN's direct convolution (what torch 2.13 runs: its oneDNN build exposes no Winograd
algorithm choice), for the 3x3 stride-1 layers of VGG16-SSD300, batch 1, fp32, ReLU fused.
OpenCV's dnn wins these layers with Winograd; this measures whether doing it in torch pays.

    T=1 python bench/bench_winograd.py      (T: torch threads)
"""
import os
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("T","1")))
BT = torch.tensor([[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], dtype=torch.float64)
G = torch.tensor([[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]], dtype=torch.float64)
AT = torch.tensor([[1,1,1,0],[0,1,-1,-1]], dtype=torch.float64)
def wino_weight(w):  # (K,C,3,3) -> (16, C, K)
    U = torch.einsum('ai,kcij,bj->abck', G, w.double(), G)  # (4,4,C,K)
    return U.reshape(16, w.shape[1], w.shape[0]).float().contiguous()
def wino_conv(x, U, b):
    # x NCHW channels_last (N,C,H,W), pad 1, out H,W
    N, C, H, W = x.shape
    th, tw = (H + 1) // 2, (W + 1) // 2
    xh = x.permute(0, 2, 3, 1)  # NHWC view (contiguous if CL)
    xp = F.pad(xh, (0, 0, 1, 2 * tw + 1 - W, 1, 2 * th + 1 - H))  # (N, 2th+2, 2tw+2, C)
    d = [[xp[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] for j in range(4)] for i in range(4)]
    # rows: B^T
    r = []
    for j in range(4):
        d0, d1, d2, d3 = d[0][j], d[1][j], d[2][j], d[3][j]
        r.append((d0 - d2, d1 + d2, d2 - d1, d1 - d3))
    V = torch.empty(16, N, th, tw, C)
    for a in range(4):
        c0, c1, c2, c3 = r[0][a], r[1][a], r[2][a], r[3][a]
        torch.sub(c0, c2, out=V[4 * a + 0]); torch.add(c1, c2, out=V[4 * a + 1])
        torch.sub(c2, c1, out=V[4 * a + 2]); torch.sub(c1, c3, out=V[4 * a + 3])
    M = torch.bmm(V.view(16, -1, C), U).view(4, 4, N, th, tw, -1)
    K = U.shape[2]
    s = [(M[0][j] + M[1][j] + M[2][j], M[1][j] - M[2][j] - M[3][j]) for j in range(4)]
    out = torch.empty(N, th, 2, tw, 2, K)
    for a in range(2):
        m0, m1, m2, m3 = s[0][a], s[1][a], s[2][a], s[3][a]
        out[:, :, a, :, 0] = m0 + m1 + m2
        out[:, :, a, :, 1] = m1 - m2 - m3
    y = out.view(N, 2 * th, 2 * tw, K)[:, :H, :W, :]
    y = torch.relu_(y + b)
    return y.permute(0, 3, 1, 2)
for C,K,H in [(512,512,38),(512,512,19),(256,256,75),(128,128,150),(64,64,300)]:
    x=torch.randn(1,C,H,H).contiguous(memory_format=torch.channels_last); w=torch.randn(K,C,3,3)*0.05; b=torch.randn(K)
    U=wino_weight(w)
    ref=torch.relu(F.conv2d(x,w,b,1,1))
    y=wino_conv(x,U,b)
    err=((y-ref).abs().max()/ref.abs().max()).item()
    wp=torch.ops.mkldnn._reorder_convolution_weight(w,[1,1],[1,1],[1,1],1,list(x.shape))
    f1=lambda: torch.ops.mkldnn._convolution_pointwise(x,wp,b,[1,1],[1,1],[1,1],1,"relu",[],"")
    f2=lambda: wino_conv(x,U,b)
    ts={1:[],2:[]}
    with torch.inference_mode():
        for _ in range(5):
            for k,f in ((1,f1),(2,f2)):
                t0=time.perf_counter(); f(); ts[k].append((time.perf_counter()-t0)*1000)
    print(C,K,H,"err",f"{err:.1e}","onednn",f"{min(ts[1]):.1f}","wino",f"{min(ts[2]):.1f}", flush=True)
