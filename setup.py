from setuptools import find_packages, setup

setup(
    name="archgw",
    version="0.1.0",
    description="One endpoint for every LLM: an OpenAI- and Anthropic-compatible gateway driven by YAML rules",
    python_requires=">=3.10",
    packages=find_packages(include=["arch", "arch.*"]),
    install_requires=[
        "tornado>=6.3",
        "pyyaml>=6",
        "jsonschema>=4.18",
        "jmespath>=1.0",
        "fastjsonschema>=2.19",          # compiled request checks (README: Dependencies)
        "prometheus_client>=0.17",       # /metrics, correct under --workers
        "uvloop>=0.19; sys_platform != 'win32'",
    ],
    extras_require={"test": ["pytest>=8", "openai>=1.40", "anthropic>=0.40", "hypothesis>=6"]},
    entry_points={"console_scripts": ["archgw = arch.cli:main"]},
)
