"""Regenerate ranker_pb2.py / ranker_pb2_grpc.py from ranker.proto.

The generated modules are committed, so a fresh clone imports them without a build step.
Run `python -m seminar.clients.proto.generate` after editing the .proto (use the venv's
grpcio-tools 1.81: its output needs protobuf < 7, like tritonclient).
tests/test_clients_config.py fails when the committed files are stale.
"""

import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "ranker.proto"
# The .proto is compiled under its import path inside the package, so the generated
# _grpc module imports `seminar.clients.proto.ranker_pb2` absolutely.
IMPORT_PATH = Path("seminar/clients/proto/ranker.proto")
OUTPUTS = ("ranker_pb2.py", "ranker_pb2.pyi", "ranker_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile ranker.proto into out_dir; return the written files."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / IMPORT_PATH
        src.parent.mkdir(parents=True)
        shutil.copy(PROTO, src)
        args = [
            "protoc",
            f"-I{tmp}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(IMPORT_PATH),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        written = []
        for name in OUTPUTS:
            dst = out_dir / name
            shutil.copy(src.parent / name, dst)
            written.append(dst)
    return written


if __name__ == "__main__":
    for path in generate(HERE):
        print(f"wrote {path}")
