"""The deformable-convolution CUDA kernel and its TensorRT plugin.

``hirn.plugins.loader`` builds the kernel with nvcc and calls it on torch CUDA tensors
(``deform_conv_cuda``) or, for tests without a GPU, runs its code on the CPU
(``deform_conv_emulated``); ``hirn.plugins.cases`` makes HiRN-like inputs. The TensorRT
plugin ``HirnDeformConv`` is C++ (``plugins/trt``, built with ``plugins/CMakeLists.txt``);
``plugins/README.md`` gives its IO, attributes, build and loading. Importing this package
needs neither CUDA nor TensorRT.
"""
