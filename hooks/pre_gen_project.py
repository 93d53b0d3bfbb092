"""Reject answers that would produce a broken project, with one line starting ERROR:.

Every answer is inserted below as a JSON string literal, which is also a valid Python
string literal, so quotes or code typed into an answer cannot break this file.
"""
import keyword
import re
import sys

slug = {{ cookiecutter.project_slug|tojson }}
package = {{ cookiecutter.package_name|tojson }}
dataset = {{ cookiecutter.dataset|tojson }}
network = {{ cookiecutter.network|tojson }}
texts = {"project_name": {{ cookiecutter.project_name|tojson }}, "author": {{ cookiecutter.author|tojson }},
         "description": {{ cookiecutter.description|tojson }}}

# Names a generated package must not shadow: the standard library, the libraries the
# project imports, and names that confuse pytest or packaging.
TAKEN = set(sys.stdlib_module_names) | {
    "torch", "torchvision", "lightning", "pytorch_lightning", "omegaconf", "numpy", "PIL",
    "matplotlib", "sklearn", "tqdm", "tensorboard", "wandb", "torchmetrics", "diffusers",
    "test", "tests", "src", "setup", "main", "configs", "scripts",
}


def error(message):
    print(f"ERROR: {message}")
    sys.exit(1)


for question, text in texts.items():
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        error(f"{question} contains a control character (a line break or tab, say); use one line of plain text")
if len(slug) > 100:
    error(f"project_slug is {len(slug)} characters long; keep names under 100 characters (it names a folder "
          "and the package)")
if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", slug):
    error(f"project_slug {slug!r} must be lowercase letters, digits and single dashes, "
          "starting with a letter (e.g. my-diffusion)")
if not package.isidentifier() or keyword.iskeyword(package) or not package.isascii():
    error(f"package_name {package!r} is not a valid Python module name; use lowercase "
          "letters, digits and underscores, starting with a letter (e.g. my_diffusion)")
if package in TAKEN:
    error(f"package_name {package!r} would shadow the module of the same name; choose "
          "another (e.g. my_{package})")
if dataset == "toy2d" and network != "mlp":
    error(f"network {network!r} needs images; toy2d data is a set of 2D points: choose network=mlp")
