#!/usr/bin/env bash
# Does llama.cpp load a GGUF that dlpx wrote, tokenize like dlpx and continue a prompt like it?
# Uses llama.cpp's prebuilt CPU binaries from npm (node-llama-cpp, pinned; ~700 MB installed,
# so this is not part of CI).
#
#   dlpx prune --quantize q8_0 --save pruned.gguf --format gguf
#   scripts/check_llama_cpp.sh pruned.gguf ["The capital of France is"] [12]
set -euo pipefail
gguf=$(realpath "$1")
prompt=${2:-"The capital of France is"}
n=${3:-12}
dlpx=${DLPX:-$(dirname "$0")/../target/release/dlpx}
work=${LLAMA_CPP_CHECK_DIR:-$(mktemp -d)}
if [ ! -d "$work/node_modules/node-llama-cpp" ]; then
  (cd "$work" && npm install --no-audit --no-fund --silent node-llama-cpp@3.22.1 >/dev/null)
fi
cat > "$work/check.mjs" <<'JS'
import {getLlama, LlamaCompletion} from "node-llama-cpp";
const [,, path, prompt, n] = process.argv;
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath: path});
const context = await model.createContext({contextSize: 256});
const completion = new LlamaCompletion({contextSequence: context.getSequence()});
const text = await completion.generateCompletion(prompt, {maxTokens: Number(n), temperature: 0});
console.log(JSON.stringify({ids: Array.from(model.tokenize(prompt)), completion: text}));
JS
theirs=$(cd "$work" && node check.mjs "$gguf" "$prompt" "$n")
ids=$("$dlpx" tokenize --model "$gguf" --text "$prompt" --no-special --json 2>/dev/null)
ours=$("$dlpx" generate --model "$gguf" --prompt "$prompt" --max-new-tokens "$n" -q 2>/dev/null)
echo "llama.cpp: $theirs"
echo "dlpx:      $ids  completion: ${ours#"$prompt"}"
python3 - "$theirs" "$ids" "${ours#"$prompt"}" <<'PY'
import json, sys
t, i, c = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
ok_ids = t["ids"] == i["ids"]
ok_text = t["completion"] == c
print(f"token ids {'equal' if ok_ids else 'DIFFER'}; greedy continuation {'equal' if ok_text else 'differs'}")
sys.exit(0 if ok_ids else 1)
PY
