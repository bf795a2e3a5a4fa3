"""Fresh-load scoring with the challenge's exact byte accounting (val_loss, val_bpb).

Modules: `luts` (per-token byte tables from a sentencepiece model), `windows` (which windows are
run and which of their targets are scored, as pure index arithmetic), `api` (`evaluate`,
`evaluate_path`, `EvalResult`), `dist` (torchrun helpers), `cli` (`golfpack eval`).
"""
