import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # test helper modules
os.environ.setdefault("ANNY_CACHE_DIR", str(ROOT / ".cache" / "anny"))
