from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# rules/ and schemas/ stay at the top of the repository (users read and copy them) and are
# shipped inside the package as arch/builtin_rules and arch/builtin_schemas, every folder
# below them included, so a non-editable install finds them (arch/schemas.py: data_dir).
DATA = {"arch.builtin_rules": "rules", "arch.builtin_schemas": "schemas"}
data_packages = {
    package + "".join("." + part for part in sub.relative_to(HERE / top).parts): sub
    for package, top in DATA.items()
    for sub in [HERE / top, *sorted(p for p in (HERE / top).rglob("*") if p.is_dir())]
}

setup(
    name="archgw",
    version="0.1.0",
    description="One endpoint for every LLM: an OpenAI- and Anthropic-compatible gateway driven by YAML rules",
    python_requires=">=3.10",
    packages=find_packages(include=["arch", "arch.*"]) + list(data_packages),
    package_dir={**DATA},
    package_data={package: ["*.yaml"] for package in data_packages},
    install_requires=[
        "tornado>=6.3",
        "pyyaml>=6",
        "jsonschema>=4.18",
        "jmespath>=1.0",
        "fastjsonschema>=2.19",          # compiled request checks (README: Dependencies)
        "prometheus_client>=0.17",       # /metrics, correct under --workers
        "python-dotenv>=1.0",            # .env files as every other tool reads them (README: Dependencies)
        "uvloop>=0.19; sys_platform != 'win32'",
        "orjson>=3.9",                   # stream events read and written ~6-15x faster (README: Dependencies)
    ],
    extras_require={"test": ["pytest>=8", "openai>=1.40", "anthropic>=0.40", "hypothesis>=6",
                             # agent frameworks the suite drives through the gateway
                             "langchain-openai>=1.0", "langchain-anthropic>=1.0", "openai-agents>=0.2"]},
    entry_points={"console_scripts": ["archgw = arch.cli:main"]},
)
